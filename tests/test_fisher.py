"""Rank-1 and diagonal Fisher: batched = loop, dense identities, Eq. (12) and Eq. (22)."""
import itertools

import pytest
import torch

from diffusion import DenoisingLoss, Schedule, with_noise
import fisher
from fisher import DiagonalFisher, Rank1Fisher, flat_params, flatten, params_list, unflatten


class ConvDenoiser(torch.nn.Module):
    """A small conv denoiser (B, C, H, W) with a time and class embedding, for Fisher tests."""

    def __init__(self, ch=3, width=8, num_classes=4):
        super().__init__()
        self.inp = torch.nn.Conv2d(ch, width, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, width)
        self.temb = torch.nn.Linear(1, width)
        self.cemb = torch.nn.Embedding(num_classes, width)
        self.out = torch.nn.Conv2d(width, ch, 3, padding=1)

    def forward(self, x, t, cond):
        h = self.inp(x)
        e = self.temb((t.to(x.dtype) / 1000).unsqueeze(1)) + self.cemb(cond)   # (B, width)
        h = torch.nn.functional.silu(self.norm(h) + e[:, :, None, None])
        return self.out(h)


def make_problem(seed=0, n_batches=3, B=5):
    torch.manual_seed(seed)
    model = ConvDenoiser().double()
    s = Schedule()
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        x0 = torch.rand(B, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
        y = torch.randint(0, 4, (B,), generator=g)
        batches.append(with_noise(s, (x0, y), g))          # fixed t and eps
    loss = DenoisingLoss(s)
    return model, loss, batches


def rel(a, b):
    return (a - b).norm().item() / b.norm().item()


def test_batched_estimate_equals_loop():
    model, loss, batches = make_problem()
    fast = Rank1Fisher.estimate(model, loss, batches, store_dtype=torch.float64)
    slow = Rank1Fisher.estimate_loop(model, loss, batches)
    assert rel(fast.mu, slow.mu) <= 1e-6
    assert abs(fast.c_star - slow.c_star) / slow.c_star <= 1e-6
    assert abs(fast.rho - slow.rho) / slow.rho <= 1e-6
    assert fast.n_samples == slow.n_samples == 15
    assert 0 < fast.diagnostics["rank1_share"] <= 1 + 1e-12
    assert -1 <= fast.diagnostics["mean_cos"] <= 1


def test_estimate_restores_train_mode_and_accepts_callable_batches():
    model, loss, batches = make_problem()
    model.train()
    F = Rank1Fisher.estimate(model, loss, lambda k: batches[k:k + 2])   # different batches per pass
    assert model.training and F.c_star > 0


def test_matches_definition_from_explicit_per_sample_gradients():
    """c* mu mu^T is the Frobenius-best rank-1 fit along mu of F_emp = mean g g^T."""
    model, loss, batches = make_problem()
    plist = params_list(model)
    G = torch.stack([flatten(torch.autograd.grad(loss(model, tuple(v[i:i + 1] for v in b)).sum(), plist))
                     for b in batches for i in range(5)])                  # (N, P)
    F_emp = G.T @ G / G.shape[0]
    mu = G.mean(0)
    F = Rank1Fisher.estimate(model, loss, batches, store_dtype=torch.float64)
    c_fit = (mu @ F_emp @ mu) / (mu @ mu) ** 2            # argmin_c ||F_emp - c mu mu^T||_F
    assert abs(F.c_star - c_fit.item()) / c_fit.item() < 1e-10
    u = mu / mu.norm()
    assert abs(F.rho - (u @ F_emp @ u).item()) / F.rho < 1e-10       # rho = u^T F_emp u


def test_penalty_grad_matvec_against_dense():
    model, loss, batches = make_problem()
    F = Rank1Fisher.estimate(model, loss, batches, store_dtype=torch.float64)
    theta_star = flat_params(model)
    assert F.penalty(theta_star).abs().item() < 1e-20 * max(1.0, F.c_star)   # 0 at theta*
    g = torch.Generator().manual_seed(1)
    delta = 1e-2 * torch.randn(theta_star.shape, generator=g, dtype=torch.float64)
    D = F.dense()
    torch.testing.assert_close(F.grad(theta_star + delta), D @ delta, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(F.penalty(theta_star + delta), 0.5 * delta @ D @ delta, rtol=1e-9, atol=1e-14)
    v = torch.randn(theta_star.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(F.matvec(v), D @ v, rtol=1e-9, atol=1e-14)
    # rho u u^T is the same matrix
    torch.testing.assert_close(F.rho * torch.outer(F.u, F.u), D, rtol=1e-10, atol=1e-16)


def test_eq22_rank1_square():
    """Eq. (22): (rho u u^T)^2 = rho (rho u u^T)."""
    model, loss, batches = make_problem(seed=3)
    F = Rank1Fisher.estimate(model, loss, batches, store_dtype=torch.float64)
    D = F.dense()
    torch.testing.assert_close(D @ D, F.rho * D, rtol=1e-10, atol=1e-12 * (D @ D).abs().max().item())


def test_state_dict_roundtrip():
    model, loss, batches = make_problem()
    F = Rank1Fisher.estimate(model, loss, batches)
    G = Rank1Fisher.from_state_dict(F.state_dict())
    th = flat_params(model) + 0.01
    torch.testing.assert_close(G.grad(th), F.grad(th))


def test_bad_per_sample_loss_shape():
    model, loss, batches = make_problem()
    with pytest.raises(ValueError, match=r"per_sample_loss must return a \(5,\) vector"):
        Rank1Fisher.estimate(model, lambda m, b: loss(m, b).mean(), batches)
    with pytest.raises(ValueError, match="one-shot iterator"):
        Rank1Fisher.estimate(model, loss, iter(batches))


def test_diagonal_fisher_matches_loop():
    model, loss, batches = make_problem()
    D = DiagonalFisher.estimate(model, loss, batches, chunk=2)
    plist = params_list(model)
    sq = [flatten(torch.autograd.grad(loss(model, tuple(v[i:i + 1] for v in b)).sum(), plist)) ** 2
          for b in batches for i in range(5)]
    torch.testing.assert_close(D.diag, torch.stack(sq).mean(0), rtol=1e-10, atol=1e-16)
    th = flat_params(model)
    assert D.penalty(th).item() == 0.0
    d = 0.1 * torch.ones_like(th)
    torch.testing.assert_close(D.grad(th + d), D.dense() @ d)


# -----------------------------------------------------------------------------
# Eq. (12): Fisher = expected Hessian, exact on a categorical model


def test_eq12_fisher_equals_expected_hessian_categorical():
    """p_theta(y|x) = softmax(W2 tanh(W1 x)); enumerate y ~ p_theta exactly for each x."""
    torch.manual_seed(0)
    K, D, Hd, N = 4, 3, 5, 6
    xs = torch.randn(N, D, dtype=torch.float64)
    shapes = [(Hd, D), (K, Hd)]
    theta = torch.randn(sum(a * b for a, b in shapes), dtype=torch.float64)

    def nll(th, x, y):                                      # l(theta; x, y) = -log p_theta(y | x)
        W1, W2 = th[:Hd * D].view(Hd, D), th[Hd * D:].view(K, Hd)
        return -torch.log_softmax(W2 @ torch.tanh(W1 @ x), dim=0)[y]

    F = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    H = torch.zeros_like(F)
    for x, y in itertools.product(xs, range(K)):
        W1, W2 = theta[:Hd * D].view(Hd, D), theta[Hd * D:].view(K, Hd)
        p = torch.softmax(W2 @ torch.tanh(W1 @ x), dim=0)[y].item()   # weight of outcome y
        g = torch.func.grad(nll)(theta, x, y)
        F += p * torch.outer(g, g) / N                                 # E[g g^T]
        H += p * torch.func.hessian(nll)(theta, x, y) / N              # E[Hessian]
    torch.testing.assert_close(F, H, rtol=1e-10, atol=1e-12)           # Eq. (12)
    assert torch.linalg.matrix_rank(F).item() > 1                      # not trivially rank-1


def test_unflatten_roundtrip():
    model, _, _ = make_problem()
    th = flat_params(model)
    parts = unflatten(th, params_list(model))
    torch.testing.assert_close(flatten(parts), th)


class DropoutDenoiser(ConvDenoiser):
    """ConvDenoiser with dropout (p = 0.5) before the output conv: its train and eval forwards differ."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x, t, cond):
        h = self.inp(x)
        e = self.temb((t.to(x.dtype) / 1000).unsqueeze(1)) + self.cemb(cond)   # (B, width)
        return self.out(self.drop(torch.nn.functional.silu(self.norm(h) + e[:, :, None, None])))


def test_estimate_runs_in_eval_mode():
    """The estimate uses the eval-mode network (as the authors' compute_rank1_coeff_and_mean) and restores train
    mode: mu and c* equal the plain formulas on eval-mode per-sample gradients, for a model with dropout
    left in train mode by the caller. Catches: removing model.eval() (the `_eval_mode` context) from
    Rank1Fisher.estimate (mutation c: dropout then masks half the features in both passes)."""
    _, loss, batches = make_problem()
    torch.manual_seed(0)
    model = DropoutDenoiser().double()
    plist = params_list(model)
    model.eval()
    G = torch.stack([flatten(torch.autograd.grad(loss(model, tuple(v[i:i + 1] for v in b)).sum(), plist))
                     for b in batches for i in range(5)])                  # (N, P), eval-mode g_i
    model.train()
    mu = G.mean(0)
    torch.manual_seed(1)
    F = Rank1Fisher.estimate(model, loss, batches, store_dtype=torch.float64)
    assert model.training                                                   # the caller's mode is restored
    assert rel(F.mu, mu) <= 1e-10
    assert abs(F.c_star - ((G @ mu) ** 2).mean().item() / (mu @ mu).item() ** 2) / F.c_star <= 1e-10
    x, y, t, eps = batches[0]
    assert not torch.equal(model(x, t, y), model.eval()(x, t, y))           # the two modes do differ


def test_diagonal_fisher_runs_in_eval_mode():
    """DiagonalFisher.estimate uses the eval-mode network, as Rank1Fisher.estimate does, and restores the caller's
    train mode: diag = mean_i g_i^2 of eval-mode per-sample gradients of a model with dropout.
    Catches: the `_eval_mode` context left out of DiagonalFisher.estimate (dropout then acts inside the per-sample
    gradients: a different diag, or vmap's error on random operations), and a mode that is not restored."""
    _, loss, batches = make_problem()
    torch.manual_seed(0)
    model = DropoutDenoiser().double()
    plist = params_list(model)
    model.eval()
    sq = torch.stack([flatten(torch.autograd.grad(loss(model, tuple(v[i:i + 1] for v in b)).sum(), plist)) ** 2
                      for b in batches for i in range(5)])                 # (N, P), eval-mode g_i^2
    model.train()
    D = DiagonalFisher.estimate(model, loss, batches, chunk=4)
    assert model.training
    torch.testing.assert_close(D.diag, sq.mean(0), rtol=1e-10, atol=1e-16)


def test_diagnostics_are_the_plain_formulas_on_the_first_samples():
    """rank1_share = sum_i (u^T g_i)^2 / sum_i ||g_i||^2 and mean_cos = mean_i cos(g_i, mu) over the first
    `diag_samples` samples (7 of 15, across a batch boundary), overall and per diffusion-step band [lo, hi),
    from explicit per-sample gradients in float64.
    Catches: (mu^T g_i)^2 without dividing by ||mu||^2 (a share above 1 on other models), cos without the square
    root of ||g_i||^2, a band test lo < t <= hi (t = 0, 250, 500, 750 sit on the edges), and a limit that stops at
    the batch's end instead of sample 7."""
    model, loss, batches = make_problem()
    x, y, _, eps = batches[0]
    batches[0] = (x, y, torch.tensor([0, 250, 499, 500, 750]), eps)       # the band edges
    F = Rank1Fisher.estimate(model, loss, batches, diag_samples=7, store_dtype=torch.float64)
    plist = params_list(model)
    ones = [tuple(v[i:i + 1] for v in b) for b in batches for i in range(5)][:7]
    G = torch.stack([flatten(torch.autograd.grad(loss(model, one).sum(), plist)) for one in ones])   # (7, P)
    ts = [int(one[2]) for one in ones]
    mu = F.mu

    def plain(rows):
        g = G[rows]
        return ((g @ mu) ** 2).sum().item() / (mu @ mu).item() / (g * g).sum().item(), \
            (g @ mu / (g.norm(dim=1) * mu.norm())).mean().item()

    d = F.diagnostics
    assert d["n"] == 7
    share, cos = plain(list(range(7)))
    assert abs(d["rank1_share"] - share) <= 1e-10 * share and abs(d["mean_cos"] - cos) <= 1e-10
    bands = {f"{lo}-{hi}": [i for i, t in enumerate(ts) if lo <= t < hi] for lo, hi in fisher.T_BANDS}
    assert d["bands"].keys() == {k for k, rows in bands.items() if rows}
    for k, band in d["bands"].items():
        share, cos = plain(bands[k])
        assert band["n"] == len(bands[k])
        assert abs(band["rank1_share"] - share) <= 1e-10 * share and abs(band["mean_cos"] - cos) <= 1e-10


def test_estimate_on_task_samples_items_once_across_the_task_with_fresh_noise_per_pass():
    """The protocol of `estimate_on_task` on class-sorted data (items 0-24 class 0, ..., 75-99 class 3): 24 distinct
    items chosen at random from all 100, the same items in the same order in both passes, fresh t in each pass,
    and every item when fewer are available than asked for.
    Catches: the first n_samples items taken (only class 0 of class-sorted data), indices drawn from
    range(n_samples), items drawn with replacement, a new choice of items in the second pass, and the noise of
    the first pass reused in the second."""
    torch.manual_seed(0)
    model = ConvDenoiser().double()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(100, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.arange(100) // 25                                              # class-sorted, 4 classes
    calls, seen_t = [], []

    def get(idx):
        calls.append(idx.clone())
        return x0[idx], y[idx]

    forward = model.forward
    model.forward = lambda x, t, c: (seen_t.append(t.clone()), forward(x, t, c))[1]
    F = fisher.estimate_on_task(model, Schedule(), get, 100, 24, 8, torch.Generator().manual_seed(3),
                                torch.Generator().manual_seed(4))
    assert F.n_samples == 24 and len(calls) == 9                             # 3 batches x (2 passes + diagnostics)
    first, second = torch.cat(calls[:3]), torch.cat(calls[3:6])
    assert torch.equal(first, second) and len(set(first.tolist())) == 24
    assert set(y[first].tolist()) == {0, 1, 2, 3}
    assert not torch.equal(torch.cat(seen_t[:3]), torch.cat(seen_t[3:6]))   # fresh t in pass 2
    calls.clear()
    fisher.estimate_on_task(model, Schedule(), get, 100, 500, 32, torch.Generator().manual_seed(3),
                            torch.Generator().manual_seed(4), kind="diag")
    assert sorted(torch.cat(calls).tolist()) == list(range(100))
