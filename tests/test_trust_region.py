"""Eq. (8)-(9) term by term, the fast training step, Eq. (10) and the Eq. (16) toy verification."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion import Schedule, batch_loss, with_noise
from fisher import DiagonalFisher, Rank1Fisher, flat_params, flatten, params_list
from trust_region import (Rank1Penalty, TrustRegionLearner, eq16_table, gradient_terms, maml_terms,
                          objective, toy_problems, trust_region_value)

ROOT = Path(__file__).resolve().parents[1]


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

    loss = lambda m, b, gen=None: batch_loss(m, s, b, gen)
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


def test_training_step_gradient_equals_A_plus_B_plus_C():
    """The fast step (one backward + analytic per-tensor (C)) adds exactly Eq. (9)'s A + B + C.
    Catches: a dropped lam or c*, (C) added to the wrong parameter block, a stale anchor."""
    model, loss, cur, rep, fishers = setup()
    beta, lam = 0.7, 3.0
    terms = gradient_terms(model, cur, rep, loss, loss, beta, lam, fishers)
    for log_terms in (False, True):
        m = copy.deepcopy(model)
        learner = TrustRegionLearner(m, loss, loss, beta=beta, lam=lam, lr=0.0)
        for F in fishers:
            learner.add_fisher(copy.deepcopy(F))
        assert rel(flatten(learner.term_C()), terms["C"]) <= 1e-10
        logs = learner.step(cur, rep, log_terms=log_terms)
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

# -----------------------------------------------------------------------------
# Eq. (10)-(16)


def test_eq10_terms_equal_second_order_maml():
    """(I) - alpha (II) = d/dtheta L^te(theta - alpha grad L^tr(theta)), by autograd through the step."""
    problems = toy_problems()
    theta_star, loss_tr, _ = problems["mlp-one-input"]
    _, loss_te, _ = problems["mlp-many-inputs"]          # a different query loss, same parameter space
    theta = theta_star + 0.05 * torch.randn(theta_star.shape, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)
    alpha = 0.3
    I, II = maml_terms(theta, loss_tr, loss_te, alpha)
    th = theta.clone().requires_grad_(True)
    inner = torch.autograd.grad(loss_tr(th), th, create_graph=True)[0]
    full = torch.autograd.grad(loss_te(th - alpha * inner), th)[0]
    assert rel(I - alpha * II, full) <= 1e-12


@pytest.fixture(scope="module")
def rows():
    return eq16_table(alpha=1e-4, radii=(1e-1, 1e-2, 1e-3))


def test_eq16_error_falls_linearly_when_F_is_rank1(rows):
    for name in ("linear-collinear", "mlp-one-input"):
        r = [x for x in rows if x["problem"] == name]
        assert r[0]["rank1_share"] == pytest.approx(1.0, abs=1e-9)
        for prev, cur in zip(r, r[1:]):
            # the locality error (alpha -> 0) falls at least linearly with the radius ...
            assert cur["rel_err_II_alpha0"] <= max(prev["rel_err_II_alpha0"] * 0.15, 1e-12)
            # ... and at alpha = 1e-4 it does so down to the alpha*rho floor of the inner step
            assert cur["rel_err_II"] <= prev["rel_err_II"] * 0.15 + 1.5 * cur["alpha_rho"]
        assert r[-1]["cos_II_C"] >= 0.99


def test_eq16_fails_when_F_is_far_from_rank1(rows):
    r = [x for x in rows if x["problem"] == "mlp-many-inputs"]
    assert r[0]["rank1_share"] < 0.6
    assert r[-1]["rel_err_II_alpha0"] > 0.1                  # does not shrink with the radius
    assert r[-1]["rel_err_II_alpha0"] > 0.5 * r[0]["rel_err_II_alpha0"]


def test_cli_prints_table():
    out = subprocess.run([sys.executable, "trust_region.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mlp-one-input" in out.stdout and "cos((II),(C))" in out.stdout
