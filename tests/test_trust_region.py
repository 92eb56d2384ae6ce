"""Eq. (8)-(9) term by term and the fast training step (Eq. 10 and Section 3.3: tests/test_derivation.py)."""
import copy

import pytest
import torch

from diffusion import DenoisingLoss, Schedule, with_noise
from replay import ReplayLoss, frozen_copy
from fisher import DiagonalFisher, Rank1Fisher, flat_params, flatten, params_list
from trust_region import (Rank1Penalty, TrustRegionLearner, gradient_terms, grad_norm_and_clip, objective,
                          trust_region_value)

class Denoiser(torch.nn.Module):
    def __init__(self, dim=4, classes=3, hidden=16):
        super().__init__()
        self.emb = torch.nn.Embedding(classes, hidden)
        self.l1 = torch.nn.Linear(dim + 1, hidden)
        self.l2 = torch.nn.Linear(hidden, dim)

    def forward(self, x, t, cond):
        h = self.l1(torch.cat([x, (t.to(x.dtype) / 1000)[:, None]], 1)) + self.emb(cond)
        return self.l2(torch.tanh(h))


def setup(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    s = Schedule()
    model = Denoiser().to(dtype)
    g = torch.Generator().manual_seed(seed)

    def batch(n, lo):
        x0 = torch.randn(n, 4, generator=g, dtype=dtype)
        return with_noise(s, (x0, torch.randint(lo, lo + 2, (n,), generator=g)), g)

    loss = lambda m, b, gen=None: DenoisingLoss(s)(m, b, gen)  # a plain function: two network calls per step
    fishers = []
    for _ in range(2):                      # two "past tasks" with their own theta*
        fishers.append(Rank1Fisher.estimate(model, loss, [batch(8, 0), batch(8, 1)], store_dtype=dtype))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
    return model, loss, batch(6, 0), batch(6, 1), fishers


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_eq9_terms_sum_to_autograd_of_eq8():
    model, loss, cur, rep, fishers = setup()
    beta, lam = 0.7, 3.0
    terms = gradient_terms(model, cur, rep, loss, loss, beta, lam, fishers)
    J = objective(model, cur, rep, loss, loss, beta, lam, fishers)
    full = flatten(torch.autograd.grad(J, params_list(model)))
    assert rel(terms["A"] + terms["B"] + terms["C"], full) <= 1e-10
    assert all(terms[k].norm() > 0 for k in "ABC")


@pytest.mark.parametrize("losses", ["functions", "joint", "joint distill"])
def test_training_step_gradient_equals_A_plus_B_plus_C(losses):
    """The fast step (one backward + analytic per-tensor (C)) adds exactly Eq. (9)'s A + B + C, with plain loss
    functions (two network calls) and with DenoisingLoss / ReplayLoss (one call on both batches, joint_mean_losses).
    A and B come from gradient_terms' separate calls. Catches: a dropped lam or c*, (C) added to the wrong parameter
    block, a stale anchor; in the joint call, the batches split at the wrong row, the replay half given the current
    targets, or the noise drawn in another order."""
    model, loss, cur, rep, fishers = setup()
    beta, lam = 0.7, 3.0
    rep_loss = loss
    if losses != "functions":
        loss = DenoisingLoss(Schedule())
        rep_loss = loss if losses == "joint" else ReplayLoss("distill", Schedule(), frozen_copy(Denoiser().double()))
    cur, rep = cur[:2], (rep[0][:4], rep[1][:4])  # noise drawn in the step, from the same generator state in both;
    #   4 replay rows against 6 current ones, so a split at the wrong row shows
    terms = gradient_terms(model, cur, rep, loss, rep_loss, beta, lam, fishers, torch.Generator().manual_seed(5))
    for log_terms in (False, True):
        m = copy.deepcopy(model)
        learner = TrustRegionLearner(m, loss, rep_loss, beta=beta, lam=lam, lr=0.0)
        assert learner.joint == (losses != "functions")
        for F in fishers:
            learner.add_fisher(copy.deepcopy(F))
        assert rel(flatten(learner.term_C()), terms["C"]) <= 1e-10
        logs = learner.step(cur, rep, torch.Generator().manual_seed(5), log_terms=log_terms)
        assert all(torch.is_tensor(v) and v.dim() == 0 for v in logs.values())   # no host sync in step
        g = flatten([p.grad for p in params_list(m)])
        assert rel(g, terms["A"] + terms["B"] + terms["C"]) <= 1e-10
        theta = flat_params(m)
        assert logs["trust_region"].item() == pytest.approx(trust_region_value(fishers, theta), rel=1e-10)
        assert logs["grad_norm"].item() == pytest.approx(g.norm().item(), rel=1e-10)
        if log_terms:
            for k in "ABC":
                assert logs[f"norm_{k}"].item() == pytest.approx(terms[k].norm().item(), rel=1e-10)


def test_diagonal_penalty_step_equals_plain_form():
    """--fisher diag: the step adds lam sum_k diag(f_k) (theta - theta_k*) (classic EWC) and logs Eq. (6).
    Catches: a penalty that ignores theta_k* of earlier tasks, or the rank-1 path taken for a diagonal F."""
    model, loss, cur, rep, _ = setup()
    g = torch.Generator().manual_seed(3)
    P = flat_params(model).numel()
    diags = [DiagonalFisher(torch.rand(P, generator=g, dtype=torch.float64), flat_params(model) + 0.01 * k)
             for k in range(2)]
    terms = gradient_terms(model, cur, None, loss, None, 0.0, 2.5, diags)
    learner = TrustRegionLearner(copy.deepcopy(model), loss, None, beta=0.0, lam=2.5, lr=0.0)
    for F in diags:
        learner.add_fisher(copy.deepcopy(F))
    logs = learner.step(cur)
    assert rel(flatten([p.grad for p in params_list(learner.model)]), terms["A"] + terms["C"]) <= 1e-10
    assert logs["trust_region"].item() == pytest.approx(trust_region_value(diags, flat_params(model)), rel=1e-10)
    with pytest.raises(ValueError, match="cannot mix"):
        learner.add_fisher(Rank1Fisher(torch.ones(P, dtype=torch.float64), 1.0, 0.0))


def test_rank1_penalty_float32_matches_per_fisher_float64():
    """The anchored float32 projection loses no accuracy against the float64 per-Fisher form.
    Catches: projecting theta itself instead of theta - theta_ref (float32 cancellation)."""
    model, loss, cur, rep, fishers = setup()
    f32 = [Rank1Fisher(F.mu.float(), F.c_star, F.mu_dot_theta_star) for F in fishers]
    m32 = copy.deepcopy(model).float()
    params = params_list(m32)
    pen = Rank1Penalty(f32, params)
    with torch.no_grad():
        for p in params:
            p.add_(1e-3 * torch.randn_like(p))
    theta = flat_params(m32).double()
    ref = sum(2.0 * F.grad(theta) for F in fishers)
    C, value = pen.terms(params, 2.0)
    assert rel(flatten(C).double(), ref) <= 1e-5
    assert value.item() == pytest.approx(trust_region_value(fishers, theta), rel=1e-4)


def test_method_switches():
    model, loss, cur, rep, fishers = setup()
    # finetune (beta = lam = 0) is plain Adam on the current loss
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    TrustRegionLearner(a, loss, None, beta=0.0, lam=0.0, lr=1e-2).step(cur, rep)
    opt = torch.optim.Adam(b.parameters(), lr=1e-2)
    loss(b, cur).mean().backward()
    opt.step()
    torch.testing.assert_close(flat_params(a), flat_params(b), rtol=0, atol=0)
    # lam = 0 ignores Fishers, beta = 0 ignores replay
    learner = TrustRegionLearner(copy.deepcopy(model), loss, loss, beta=0.0, lam=0.0)
    learner.add_fisher(fishers[0])
    assert "trust_region" not in learner.step(cur, rep) and learner.penalty is None


def test_bad_hyperparameters():
    model, loss, *_ = setup()
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        TrustRegionLearner(model, loss, loss, lam=-1.0)
    with pytest.raises(ValueError, match="needs a replay_loss_fn"):
        TrustRegionLearner(model, loss, None, beta=1.0)


def test_state_dict_resume_is_exact():
    model, loss, cur, rep, fishers = setup()
    a = TrustRegionLearner(copy.deepcopy(model), loss, loss, beta=1.0, lam=2.0, lr=1e-2)
    for F in fishers:
        a.add_fisher(copy.deepcopy(F))
    a.step(cur, rep)
    sd, weights = copy.deepcopy(a.state_dict()), copy.deepcopy(a.model.state_dict())
    a.step(rep, cur)
    b_model = copy.deepcopy(model)
    b_model.load_state_dict(weights)
    b = TrustRegionLearner(b_model, loss, loss, beta=1.0, lam=2.0, lr=1e-2)
    b.load_state_dict(sd)
    b.step(rep, cur)
    torch.testing.assert_close(flat_params(a.model), flat_params(b.model), rtol=0, atol=0)

def test_grad_clipping_below_and_above_the_threshold():
    """grad_norm_and_clip returns the norm before clipping and scales the gradients as
    torch.nn.utils.clip_grad_norm_ does: untouched below max_norm (and with max_norm None), scaled to max_norm
    (by max_norm / (norm + 1e-6)) above it.
    Catches: a missing clamp(max=1) (small gradients scaled up to max_norm), the norm returned after clipping,
    a norm summed over tensors instead of sqrt of the sum of squares, and only the first tensor scaled."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    norm = torch.cat([x.reshape(-1) for x in grads]).norm().item()
    for max_norm in (None, 2 * norm, 0.5 * norm):
        params = [torch.zeros_like(x, requires_grad=True) for x in grads]
        ref = [torch.zeros_like(x, requires_grad=True) for x in grads]
        for p, q, x in zip(params, ref, grads):
            p.grad, q.grad = x.clone(), x.clone()
        out = grad_norm_and_clip(params, max_norm)
        assert out.item() == pytest.approx(norm, rel=1e-12)
        if max_norm:
            torch.nn.utils.clip_grad_norm_(ref, max_norm)
        for p, q in zip(params, ref):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
        after = torch.cat([p.grad.reshape(-1) for p in params]).norm().item()
        assert after == pytest.approx(min(norm, max_norm or norm), rel=1e-6)
