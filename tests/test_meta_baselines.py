"""Tests for meta_baselines.py: FTML first/second order against references, VR-MCL's STORM recursion,
the support/query split, and choosing a learner by name."""
import copy

import pytest
import torch

import meta_baselines as mb


class MLP(torch.nn.Module):
    """eps_hat = MLP([x_t, t/T]) on flat samples (B, D); ignores cond."""

    def __init__(self, dim=3, hidden=5):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden, dtype=torch.float64), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, dim, dtype=torch.float64))

    def forward(self, x_t, t, cond):
        return self.net(torch.cat([x_t, t.to(x_t.dtype)[:, None] / 1000], 1))  # (B, D)


def mse_loss(model, batch, generator=None):
    """A deterministic per-sample loss on a pre-noised batch (x, cond, t, target): (B,)."""
    x, cond, t, target = batch
    return (model(x, t, cond) - target).pow(2).mean(1)


def _batch(n=8, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g, dtype=torch.float64), None,
            torch.randint(0, 1000, (n,), generator=g), torch.randn(n, dim, generator=g, dtype=torch.float64))


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --------------------------------------------------------------------------------------------------
# Split


def test_split_is_exact_and_odd_batch_errors():
    x = torch.arange(6)
    support, query = mb.split_support_query((x, None))
    assert torch.equal(support[0], torch.tensor([0, 2, 4])) and torch.equal(query[0], torch.tensor([1, 3, 5]))
    assert support[1] is None
    with pytest.raises(ValueError, match="even batch size, got 7"):
        mb.split_support_query((torch.arange(7), None))
    learner = mb.FTMLLearner(MLP(), mse_loss)
    with pytest.raises(ValueError, match="even batch size"):
        learner.step(_batch(n=5))


# --------------------------------------------------------------------------------------------------
# FTML


def test_first_order_ftml_is_adam_on_query_gradient_at_adapted_params():
    """Reference written the way the authors' port does it: copy the model, one SGD step on the support
    half, query loss at the copy, its gradients handed to Adam on the base model."""
    torch.manual_seed(0)
    model = MLP()
    ref = copy.deepcopy(model)
    alpha, beta = 0.05, 0.7
    learner = mb.FTMLLearner(model, mse_loss, mse_loss, lr=1e-2, inner_lr=alpha, beta=beta)
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(3):
        batch, rep = _batch(seed=step), _batch(seed=100 + step)
        learner.step(batch, rep)

        (s, q), (rs, rq) = mb.split_support_query(batch), mb.split_support_query(rep)
        fast = copy.deepcopy(ref)
        inner = torch.optim.SGD(fast.parameters(), lr=alpha)
        (mse_loss(fast, s).mean() + beta * mse_loss(fast, rs).mean()).backward()
        inner.step()
        fast.zero_grad()
        (mse_loss(fast, q).mean() + beta * mse_loss(fast, rq).mean()).backward()
        for p, pf in zip(ref.parameters(), fast.parameters()):
            p.grad = pf.grad.clone()
        adam.step()
        torch.testing.assert_close(_params(model), _params(ref), rtol=1e-12, atol=1e-12)


def test_second_order_ftml_matches_explicit_hessian():
    """g = (I - alpha H_s(theta)) grad L_q(theta - alpha grad L_s(theta)), with H_s from autograd's hessian."""
    torch.manual_seed(1)
    model = MLP()
    alpha = 0.3
    batch = _batch(seed=3)
    s, q = mb.split_support_query(batch)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = _params(model)

    def loss_at(flat, part):
        chunks, i = {}, 0
        for n, shape in zip(names, shapes):
            chunks[n] = flat[i: i + shape.numel()].reshape(shape)
            i += shape.numel()
        return mse_loss(mb._AtParams(model, chunks), part).mean()

    grad_s = torch.func.grad(lambda f: loss_at(f, s))(theta)
    hess_s = torch.autograd.functional.hessian(lambda f: loss_at(f, s), theta)  # (P, P)
    grad_q = torch.func.grad(lambda f: loss_at(f, q))(theta - alpha * grad_s)
    expected = grad_q - alpha * hess_s @ grad_q  # paper Eq. 10, terms (I) and (II)

    params = dict(model.named_parameters())
    grads, _ = mb.meta_gradient(model, params, mse_loss, None, batch, inner_lr=alpha, second_order=True)
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in grads]), expected, rtol=1e-10, atol=1e-12)
    grads_fo, _ = mb.meta_gradient(model, params, mse_loss, None, batch, inner_lr=alpha, second_order=False)
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in grads_fo]), grad_q, rtol=1e-10, atol=1e-12)
    assert (expected - grad_q).abs().max() > 1e-4  # the two orders really differ here

    # the learner's second-order step is Adam on that gradient
    ref = copy.deepcopy(model)
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    mb.FTMLLearner(model, mse_loss, lr=1e-2, inner_lr=alpha, second_order=True).step(batch)
    i = 0
    for p in ref.parameters():
        p.grad = expected[i: i + p.numel()].reshape(p.shape).clone()
        i += p.numel()
    adam.step()
    torch.testing.assert_close(_params(model), _params(ref), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# VR-MCL


def test_vrmcl_with_r_zero_equals_ftml():
    torch.manual_seed(2)
    a = MLP()
    b = copy.deepcopy(a)
    ftml = mb.FTMLLearner(a, mse_loss, mse_loss, lr=1e-2, inner_lr=0.1)
    vr = mb.VRMCLLearner(b, mse_loss, mse_loss, lr=1e-2, inner_lr=0.1, r=0.0)
    for step in range(4):
        batch, rep = _batch(seed=step), _batch(seed=50 + step)
        logs_f, logs_v = ftml.step(batch, rep), vr.step(batch, rep)
        assert float(logs_f["loss"]) == pytest.approx(float(logs_v["loss"]), rel=1e-12)
    torch.testing.assert_close(_params(a), _params(b), rtol=1e-12, atol=1e-12)


class Vector(torch.nn.Module):
    """eps_hat = w for every sample: loss(w; x) = mean_d (w_d - x_d)^2 is a quadratic in w."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, x_t, t, cond):
        return self.w.expand_as(x_t)  # (B, D)


def test_vrmcl_matches_storm_formula_by_hand_on_a_quadratic():
    """Per batch, L(w) = mean_i mean_d (w_d - x_id)^2 so grad L(w) = 2/D (w - xbar). One inner SGD step:
    w' = w - alpha 2/D (w - xbar_s); first-order g(w) = 2/D (w' - xbar_q). Two steps of
    m_b = g(w_b; xi_b) + r (m_{b-1} - g(w_{b-1}; xi_b)) and Adam written out."""
    d, alpha, r, lr, beta1, beta2, adam_eps = 3, 0.2, 0.4, 0.1, 0.9, 0.999, 1e-8
    w0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    model = Vector(w0)
    learner = mb.VRMCLLearner(model, mse_loss, lr=lr, inner_lr=alpha, r=r)
    batches = [_batch(n=6, dim=d, seed=s) for s in (10, 11)]

    def g(w, batch):
        s, q = mb.split_support_query(batch)
        w_adapted = w - alpha * 2 / d * (w - s[3].mean(0))
        return 2 / d * (w_adapted - q[3].mean(0))

    def adam(w, grads):  # bias-corrected Adam on a sequence of gradients, the last one applied to w
        m1 = m2 = torch.zeros_like(w)
        for k, grad in enumerate(grads, start=1):
            m1 = beta1 * m1 + (1 - beta1) * grad
            m2 = beta2 * m2 + (1 - beta2) * grad**2
        k = len(grads)
        return w - lr * (m1 / (1 - beta1**k)) / ((m2 / (1 - beta2**k)).sqrt() + adam_eps)

    m0 = g(w0, batches[0])  # m_0 = g(w_0; xi_0)
    w1 = adam(w0, [m0])
    learner.step(batches[0])
    torch.testing.assert_close(learner.momentum[0], m0)
    torch.testing.assert_close(model.w.detach(), w1)

    m1 = g(w1, batches[1]) + r * (m0 - g(w0, batches[1]))  # STORM, previous iterate on the same batch
    w2 = adam(w1, [m0, m1])
    learner.step(batches[1])
    torch.testing.assert_close(learner.momentum[0], m1)
    torch.testing.assert_close(model.w.detach(), w2)


def test_vrmcl_evaluates_both_iterates_with_the_same_noise():
    """With noise drawn from the generator, r = 0 still equals FTML, and the generator ends where FTML's does."""
    def noisy_loss(model, batch, generator=None):
        x, cond = batch[0], batch[1]
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        t = torch.randint(0, 1000, (x.shape[0],), generator=generator)
        return (model(x + eps, t, cond) - eps).pow(2).mean(1)

    torch.manual_seed(3)
    a = MLP()
    b = copy.deepcopy(a)
    ftml = mb.FTMLLearner(a, noisy_loss, lr=1e-2, inner_lr=0.1)
    vr = mb.VRMCLLearner(b, noisy_loss, lr=1e-2, inner_lr=0.1, r=0.0)
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for step in range(3):
        batch = _batch(seed=step)[:2]
        ftml.step(batch, generator=ga)
        vr.step(batch, generator=gb)
    torch.testing.assert_close(_params(a), _params(b), rtol=1e-12, atol=1e-12)
    assert torch.equal(ga.get_state(), gb.get_state())


def test_vrmcl_state_dict_resumes_exactly():
    torch.manual_seed(4)
    a = MLP()
    learner = mb.VRMCLLearner(a, mse_loss, lr=1e-2, inner_lr=0.1, r=0.5)
    learner.step(_batch(seed=0))
    learner.step(_batch(seed=1))
    b = copy.deepcopy(a)
    resumed = mb.VRMCLLearner(b, mse_loss, lr=1e-2, inner_lr=0.1, r=0.5)
    resumed.load_state_dict(copy.deepcopy(learner.state_dict()))
    learner.step(_batch(seed=2))
    resumed.step(_batch(seed=2))
    torch.testing.assert_close(_params(a), _params(b), rtol=0, atol=0)


def test_vrmcl_previous_iterate_sees_the_same_noise_with_r_positive():
    """With r = 0.6 and a loss whose noise comes from the step's generator, VR-MCL's second momentum is
    m_1 = g(w_1; xi_1, n_1) + r (m_0 - g(w_0; xi_1, n_1)) with the SAME noise draws n_1 in both meta-gradients,
    written out on the quadratic L(w) = mean_i mean_d (w_d - x_id - n_id)^2 (support noise drawn first, then query).
    Catches: the generator not rewound before the previous iterate's meta-gradient (fresh noise there: the
    variance reduction is lost, and r = 0 cannot see it), the previous iterate evaluated at the current
    parameters, the previous batch used for it, and (g_old - m_old) with the sign flipped."""
    def noisy(model, batch, generator=None):
        x = batch[3]
        n = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return (model(x, batch[2], None) - x - n).pow(2).mean(1)

    d, alpha, r = 3, 0.2, 0.6
    w0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    model = Vector(w0)
    learner = mb.VRMCLLearner(model, noisy, lr=0.1, inner_lr=alpha, r=r)
    batches = [_batch(n=6, dim=d, seed=s) for s in (20, 21)]
    gen = torch.Generator().manual_seed(7)

    def g(w, batch, state):
        """First-order meta-gradient by hand with the noise drawn from a generator at `state`."""
        s, q = mb.split_support_query(batch)
        draw = torch.Generator()
        draw.set_state(state)
        n_s = torch.randn(s[3].shape, generator=draw, dtype=torch.float64)
        n_q = torch.randn(q[3].shape, generator=draw, dtype=torch.float64)
        w_adapted = w - alpha * 2 / d * (w - (s[3] + n_s).mean(0))
        return 2 / d * (w_adapted - (q[3] + n_q).mean(0))

    state0 = gen.get_state()
    learner.step(batches[0], generator=gen)
    m0, w1 = g(w0, batches[0], state0), model.w.detach().clone()
    torch.testing.assert_close(learner.momentum[0], m0, rtol=1e-12, atol=1e-14)
    state1 = gen.get_state()
    learner.step(batches[1], generator=gen)
    m1 = g(w1, batches[1], state1) + r * (m0 - g(w0, batches[1], state1))
    torch.testing.assert_close(learner.momentum[0], m1, rtol=1e-12, atol=1e-14)
    assert (g(w0, batches[1], state1) - g(w1, batches[1], state1)).abs().max() > 1e-3   # the iterates differ
