"""derivation.py: Section 3.3 (Eq. 10-16) measured on toys; the MAML terms of trust_region.maml_terms (Eq. 10)
against autograd through the inner step."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from derivation import ALPHA, LAM_TABLES, eq16_table, format_table, measure, slope, toy_problems
from trust_region import maml_terms

ROOT = Path(__file__).resolve().parents[1]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -----------------------------------------------------------------------------
# Eq. (10)-(16): Section 3.3 measured on the toys of derivation.toy_problems


@pytest.fixture(scope="module")
def toys():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # as `python derivation.py`: toy sizes, threads only contend
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


@pytest.mark.slow
def test_cli_prints_table():
    out = subprocess.run([sys.executable, "derivation.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    for text in ("denoiser (production)", "mlp-one-input (idealised)", "cos(u, top eigenvector)", "lam_eff",
                 "cos(II,C)", "orders"):
        assert text in out.stdout


def test_cli_help_and_bad_flags():
    """-h prints the help and exits 0 without measuring; an unknown flag is one line "error: ..." and exit 2."""
    out = subprocess.run([sys.executable, "derivation.py", "-h"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Section 3.3" in out.stdout
    out = subprocess.run([sys.executable, "derivation.py", "--fast"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
