"""Eq. (8)-(9) term by term, the fast training step, Eq. (10), and Section 3.3 (Eq. 11-16) measured on toys."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion import DenoisingLoss, Schedule, batch_loss, with_noise
from replay import ReplayLoss, frozen_copy
from fisher import DiagonalFisher, Rank1Fisher, flat_params, flatten, params_list
from trust_region import (ALPHA, LAM_TABLES, Rank1Penalty, TrustRegionLearner, eq16_table, gradient_terms,
                          format_table, grad_norm_and_clip, maml_terms, measure, objective, slope, toy_problems,
                          trust_region_value)

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

# -----------------------------------------------------------------------------
# Eq. (10)-(16): Section 3.3 measured on the toys of trust_region.toy_problems


@pytest.fixture(scope="module")
def toys():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # as `python trust_region.py`: toy sizes, threads only contend
    yield toy_problems()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def table(toys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield eq16_table(toys=toys)
    torch.set_num_threads(threads)


RANK1 = ("linear-collinear", "mlp-one-input")            # idealised, F exactly rank-1
PRODUCTION = ("mlp-regression", "denoiser")               # Rank1Fisher.estimate, term_C, separate sets


def small_r(t):
    return [x for x in t["rows"] if x["alpha"] == ALPHA and x["radius"] <= 0.1]


@pytest.mark.parametrize("name,query", [("mlp-one-input", "mlp-many-inputs"), ("denoiser", None)])
def test_eq10_terms_equal_second_order_maml(toys, name, query):
    """(I) - alpha (II) = d/dtheta L^te(theta - alpha grad L^tr(theta)), by autograd through the step, on an
    idealised toy and on the denoiser (functional_call through the production model, separate tr and te).
    Catches: (II) as H^te (I) instead of H^tr (I), or (I) taken at theta instead of theta'."""
    toy = toys[name]
    loss_tr = toy["L"]["tr"]
    loss_te = toys[query]["L"]["te"] if query else toy["L"]["te"]
    theta = toy["theta_star"] + 0.05 * toy["d"]
    alpha = 0.3
    I, II = maml_terms(theta, loss_tr, loss_te, alpha)
    th = theta.clone().requires_grad_(True)
    inner = torch.autograd.grad(loss_tr(th), th, create_graph=True)[0]
    full = torch.autograd.grad(loss_te(th - alpha * inner), th)[0]
    assert rel(I - alpha * II, full) <= 1e-12
    assert rel(I, full) > 1e-3                                # the alpha (II) term is not negligible here


def test_eq11_error_is_alpha_rho_on_rank1_toys(table):
    """Where replay = query and F = H is rank-1, (I) - (B) = grad L(theta') - grad L(theta) ~ -alpha rho F delta,
    so ||(I) - (B)|| / ||(B)|| = alpha rho at every small radius and vanishes at order 1 in alpha.
    Catches: flipping the sign of (B) in the table (error 2, mutation a); replacing (B) by (I) itself (error 0,
    mutation b); (B) taken at theta' instead of theta (error 0)."""
    for name in RANK1:
        t = table[name]
        for row in small_r(t):
            assert row["e11"] / (row["alpha"] * t["rho"]) == pytest.approx(1.0, abs=0.02)
        assert t["orders"]["e11_alpha|alpha"] == pytest.approx(1.0, abs=0.01)


def test_taylor_remainders_vanish_at_order_one(table):
    """Eq. (13)'s Taylor remainder ||grad L^te(theta) - grad L^te(theta*) - H^te(theta*) delta|| / ||H^te delta||
    and Eq. (15)'s ||H^tr(theta) - H^tr(theta*)|| / ||H^tr(theta*)|| are O(r) on every non-quadratic toy, and
    zero on the quadratic one. Catches: a Hessian taken at theta instead of theta* (remainder 0, slope
    undefined), or delta measured from the wrong point (remainder O(1))."""
    for name, t in table.items():
        if name == "linear-collinear":
            assert max(max(x["e13_taylor"], x["e15_local"]) for x in t["rows"] if "e15_local" in x) <= 1e-12
            continue
        assert t["orders"]["e13_taylor"] == pytest.approx(1.0, abs=0.05), name
        assert t["orders"]["e15_local"] == pytest.approx(1.0, abs=0.05), name


def test_eq16_on_rank1_toys(table):
    """(II) -> rho F^ delta: with alpha -> 0 the error is O(r) (zero for the quadratic toy); the inner step adds
    an O(alpha) part; cos((II), (C)) = 1. Catches: Eq. 16 without the factor rho (error ~ |1 - rho|), (II)
    taken as H^te instead of H^tr evaluated at theta (no O(r) rate)."""
    t = table["mlp-one-input"]
    assert t["orders"]["e16_alpha0"] == pytest.approx(1.0, abs=0.05)
    for name in RANK1:
        assert table[name]["orders"]["e16_alpha|alpha"] == pytest.approx(1.0, abs=0.02)
        assert all(x["cos_II_C"] >= 1 - 1e-3 for x in small_r(table[name]))   # 1 - O(r^2)
    assert max(x["e16_alpha0"] for x in table["linear-collinear"]["rows"]) <= 1e-12


def test_maml_update_is_B_plus_lam_eff_C_with_lam_eff_minus_two_alpha_rho(table):
    """On the rank-1 toys the MAML old-task gradient (I) - alpha (II) equals (B) + lam_eff F^ delta with
    lam_eff = -2 alpha rho (Eq. 11's error and alpha (II) each contribute -alpha rho F delta): the opposite
    sign to the experiments' lam > 0. Catches: dropping alpha (II) from the update (lam_eff -> -alpha rho),
    or a sign flip of (II) (lam_eff -> 0)."""
    for name in RANK1:
        for row in small_r(table[name]):
            assert row["lam_ratio"] == pytest.approx(-2.0, abs=0.02)
            assert row["resid"] <= 0.03 * row["radius"] / 0.1 + 1e-9     # O(r) residual
            assert row["lam_eff"] < 0 < min(LAM_TABLES.values())


def test_eq16_does_not_converge_when_F_is_far_from_rank1(table):
    """mlp-many-inputs: F has rank 16 (rank-1 share < 0.6), so (II) ~ F^2 delta is not rho F^ delta: the error
    stays at ~0.3 as r shrinks (order 0) and the lam_eff fit leaves a residual of the same size.
    Catches: using the full F in place of the rank-1 F^ for the reference (error would fall as O(r))."""
    t = table["mlp-many-inputs"]
    assert t["rank1_share"] < 0.6 and abs(t["orders"]["e16_alpha0"]) < 0.05
    assert small_r(t)[-1]["e16_alpha0"] > 0.1 and small_r(t)[-1]["resid"] > 0.1


def test_term_C_is_the_rank1_training_term(toys):
    """(C) in the table is TrustRegionLearner.term_C with the estimated rank-1 F^ (lam = 1): parallel to u,
    equal to the plain Rank1Fisher.grad, and cos((II), (C)) is computed with it.
    Catches: the Eq. 16 cosine using the full Fisher F instead of the rank-1 F^ (mutation d; F is far from
    rank-1 on these toys), and (C) anchored at theta instead of theta* (zero)."""
    for name in ("mlp-many-inputs", *PRODUCTION):
        toy = toys[name]
        m = measure(toy, 1e-2, ALPHA)
        II, C, F = m["vectors"]["II"], m["vectors"]["C"], toy["F"]
        theta = toy["theta_star"] + 1e-2 * toy["d"]
        assert rel(C, F.grad(theta)) <= 1e-10
        assert abs(float(C @ F.u) / float(C.norm())) >= 1 - 1e-12
        assert m["cos_II_C"] == pytest.approx(float(II @ C / (II.norm() * C.norm())), abs=1e-12)
        assert rel(toy["F_full"] @ (1e-2 * toy["d"]), C) > 0.1       # the full F would give another (C)


def test_production_toys_use_the_estimate_and_separate_samples(toys, table):
    """Production toys: F^ comes from Rank1Fisher.estimate on the Fisher samples, so rho = u^T F u for their
    empirical Fisher F (exactly) and rho < top eigenvalue; support, query and replay are different draws.
    Catches: the exact eigenpair in place of the estimate (rho = top eigenvalue, cos(u, v1) = 1); support,
    query and replay being one set (H^tr = H^te, (I) = (B) at alpha = 0)."""
    for name in PRODUCTION:
        toy, t = toys[name], table[name]
        u = toy["F"].u.double()
        assert float(u @ toy["F_full"] @ u) == pytest.approx(toy["F"].rho, rel=1e-10)
        assert t["rho"] < 0.9 * t["top_eig"] and t["cos_u_v1"] < 0.9
        assert t["e15_tr_te"] > 0.01 and min(x["e11_sample"] for x in t["rows"]) > 0.01


def test_production_gradient_at_theta_star_dominates_at_small_radius(table):
    """With finite support/query sets grad L^te(theta*) != 0 (Eq. 20 drops it): its ratio to H^te delta grows as
    1/r, so Eq. (11) and (13) fail as r -> 0, while their alpha part still vanishes at order 1 in alpha and
    cos((II), (C)) flips sign with delta -> -delta (it is set by grad L^te(theta*), not by delta).
    Catches: query = replay (e11 -> 0 at alpha -> 0); grad L^te(theta*) computed at theta (order 0)."""
    for name in PRODUCTION:
        t = table[name]
        assert t["orders"]["e13_base"] == pytest.approx(-1.0, abs=0.05)
        assert t["orders"]["e11"] == pytest.approx(-1.0, abs=0.1)
        assert t["orders"]["e11_alpha|alpha"] == pytest.approx(1.0, abs=0.05)
        cos = small_r(t)[-1]["cos_II_C"]
        assert abs(cos) > 0.5 and t["flip"]["cos_II_C"] == pytest.approx(-cos, abs=0.05)


def test_slope_recovers_known_orders():
    """slope() fits y = c x^k exactly. Catches: log of x and y swapped (1/k), or a missing centring."""
    xs = [1e-1, 1e-2, 1e-3]
    assert slope(xs, [3 * x ** 2 for x in xs]) == pytest.approx(2.0, abs=1e-12)
    assert slope(xs, [5 / x for x in xs]) == pytest.approx(-1.0, abs=1e-12)


def test_format_table_prints_every_toy_and_column(table):
    text = format_table(table)
    for name in table:
        assert f"{name} (" in text
    for col in ("Eq11", "Taylor", "Eq15 H(th)", "Eq16", "cos(II,C)", "lam/(a rho)", "cos(u, top eigenvector)",
                "orders", "with delta -> -delta"):
        assert col in text


def test_table_reports_the_top_eigenpair_of_the_empirical_fisher(toys, table):
    """top_eig and cos(u, top eigenvector) of the Section 3.3 table, against the top eigenpair found by power
    iteration on F (independent of eigh's ordering), and rank1_share = rho / tr F.
    Catches: evecs[:, 0] (the smallest eigenvalue's vector) or evecs[-1] (a row, not an eigenvector) in place of
    evecs[:, -1], evals[0] as the top eigenvalue, and a share divided by the top eigenvalue instead of the trace."""
    for name, t in table.items():
        F_full = toys[name]["F_full"]
        v = torch.ones(F_full.shape[0], dtype=torch.float64)
        for _ in range(5000):                                     # power iteration: v -> the top eigenvector
            v = F_full @ v
            v = v / v.norm()
        lam1 = float(v @ F_full @ v)
        assert rel(F_full @ v, lam1 * v) <= 1e-8, name           # converged
        assert t["top_eig"] == pytest.approx(lam1, rel=1e-10), name
        assert t["cos_u_v1"] == pytest.approx(abs(float(toys[name]["F"].u.double() @ v)), abs=1e-7), name
        assert t["rank1_share"] == pytest.approx(t["rho"] / float(F_full.trace()), rel=1e-10), name
    assert all(table[name]["cos_u_v1"] == pytest.approx(1.0, abs=1e-7) for name in RANK1)


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


@pytest.mark.slow
def test_cli_prints_table():
    out = subprocess.run([sys.executable, "trust_region.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    for text in ("denoiser (production)", "mlp-one-input (idealised)", "cos(u, top eigenvector)", "lam_eff",
                 "cos(II,C)", "orders"):
        assert text in out.stdout
