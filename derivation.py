"""Section 3.3 measured: the MAML gradient of Eq. (10) against the trust-region gradient of Eq. (9), on toys.

    python derivation.py        # under half a minute on one core: one table per toy, float64

The paper argues (Section 3.3, Appendix B) that one-step MAML's meta-gradient (I) - alpha (II) splits into
replay's term (B) (Eq. 11) and, through Eq. (13)-(16), a multiple of the Fisher term (C). Here every step of that
argument is a number. At theta = theta* + delta, delta = r d (d a fixed unit vector), inner step alpha, support
(tr), query (te) and replay (rep) sets, and the toy's rank-1 F^ = rho u u^T:
    Eq. (11)  (I) = grad L^te(theta')  vs  (B) = grad L^rep(theta)   (beta = 1)
    Eq. (13)  grad L^te(theta)  vs  H^te(theta*) delta   (Eq. 20 with grad L^te(theta*) dropped)
    Eq. (15)  H^tr(theta) vs H^tr(theta*) vs H^te(theta*) vs F (full Fisher of the Fisher samples) vs F^
    Eq. (16)  (II)  vs  rho F^ delta  vs  (C) = F^ delta, (C) from TrustRegionLearner.term_C with lam = 1
    update    (I) - alpha (II) = (B) + lam_eff F^ delta + residual (least squares in lam_eff)
Errors are relative (||a - b|| / ||b||; Frobenius for matrices); `slope` fits their order.

The terms come from trust_region.py: (I), (II) from maml_terms (Eq. 10), (C) from TrustRegionLearner.term_C, the
rank-1 Fisher from fisher.Rank1Fisher.estimate on the production toys. tests/test_trust_region.py checks the
orders and signs this prints.

Deviations from the paper
- The idealised toys use the true Fisher of a unit-variance Gaussian likelihood (= the Gauss-Newton matrix),
  which equals the Hessian at an interpolating optimum; see `toy_problems`.
"""
from __future__ import annotations

import torch

import diffusion
import replay
import runfiles
from fisher import Rank1Fisher, flat_params, flatten, params_list
from trust_region import TrustRegionLearner, maml_terms


ALPHA = 1e-4                                     # Table 3: inner-loop lr of the bilevel baselines
LAM_TABLES = {"Table 3 (ImageNet)": 15000.0, "Table 4 (CW10)": 12.0}


def _mlp(theta, x, widths):
    """Scalar-output tanh MLP on x (N, D) with parameters packed in theta. Returns (N,)."""
    h, i = x, 0
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        W = theta[i:i + a * b].view(b, a); i += a * b
        c = theta[i:i + b]; i += b
        h = h @ W.T + c
        if k < len(widths) - 2:
            h = torch.tanh(h)
    return h.squeeze(-1)


class _FlatModel(torch.nn.Module):
    """f(theta, x) with theta one (P,) parameter, so the idealised toys run through the same code."""

    def __init__(self, fn, theta):
        super().__init__()
        self.fn, self.theta = fn, torch.nn.Parameter(theta.clone())

    def forward(self, x):
        return self.fn(self.theta, x)


class _TinyDenoiser(torch.nn.Module):
    """eps_theta(x_t, t, c) = W3 tanh(W2 tanh(W1 [x_t, t/T] + E[c])): (B, 2), (B,), (B,) -> (B, 2)."""

    def __init__(self, dim=2, classes=3, hidden=12):
        super().__init__()
        self.inp, self.emb = torch.nn.Linear(dim + 1, hidden), torch.nn.Embedding(classes, hidden)
        self.mid, self.out = torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, dim)

    def forward(self, x, t, c):
        h = torch.tanh(self.inp(torch.cat([x, t[:, None].to(x.dtype) / 1000], 1)) + self.emb(c))  # (B, hidden)
        return self.out(torch.tanh(self.mid(h)))                                                   # (B, dim)


def _half_sq(model, batch, generator=None):
    """Per-sample Gaussian negative log-likelihood, unit variance: 1/2 (f(x) - y)^2, (B,)."""
    return 0.5 * (model(batch[0]) - batch[1]) ** 2


def _of_theta(model, loss, batch):
    """theta (P,) -> loss(model at theta, batch), the (B,) per-sample vector; twice differentiable."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    like = params_list(model)

    def f(theta):
        ps = {n: v.view_as(p) for n, v, p in zip(names, theta.split([p.numel() for p in like]), like)}
        return loss(lambda *a: torch.func.functional_call(model, ps, a), batch)
    return f


def _toy(model, loss, rep_loss, sets, F, F_full, kind, g):
    theta_star = flat_params(model)
    d = torch.randn(theta_star.shape, generator=g, dtype=theta_star.dtype)
    L = {k: (lambda f: lambda th: f(th).mean())(_of_theta(model, rep_loss if k == "rep" else loss, b))
         for k, b in sets.items()}
    learner = TrustRegionLearner(model, loss, None, beta=0.0, lam=1.0, lr=0.0)
    learner.add_fisher(Rank1Fisher.from_state_dict(F.state_dict()))            # anchor: theta* = now
    return dict(model=model, theta_star=theta_star, d=d / d.norm(), L=L, F=F, F_full=F_full, kind=kind,
                learner=learner)


def _production(model, loss, rep_loss, sets, fisher_batch, kind, g):
    """The production path: F^ by Rank1Fisher.estimate at theta* = the model now; F = its empirical Fisher."""
    F = Rank1Fisher.estimate(model, loss, [fisher_batch], diag_samples=0, store_dtype=torch.float64)
    G = torch.func.jacrev(_of_theta(model, loss, fisher_batch))(flat_params(model))    # (N, P) rows g_i
    return _toy(model, loss, rep_loss, sets, F, G.T @ G / G.shape[0], kind, g)         # Eq. (12) F_emp


def toy_problems(seed: int = 0) -> dict:
    """Five toys: name -> dict(model, theta_star, d, L {tr, te, rep: theta -> loss}, F, F_full, kind, learner).

    Idealised (support = query = replay = one set; F^ = exact top eigenpair of the exact Fisher; Gaussian
    likelihood with interpolated targets, so H = F at theta*, Eq. 12):
    - linear-collinear: f = theta^T x, all x on one line: F = H exactly rank-1, loss quadratic.
    - mlp-one-input: tanh MLP, one input: F = J J^T exactly rank-1, loss not quadratic.
    - mlp-many-inputs: the same MLP, 16 inputs: F has rank 16, its rank-1 part is a poor fit.
    Production (F^ = Rank1Fisher.estimate, (C) = TrustRegionLearner.term_C; tr, te, rep drawn separately):
    - mlp-regression: tanh MLP fit by L-BFGS to 1024 noisy samples of a teacher MLP (x near one point);
      Fisher samples y ~ N(f_theta*(x), 1) (the model's own likelihood); replay y = f_theta*(x) (distillation).
    - denoiser: class-conditional toy denoiser (3 classes in 2-D) trained with Adam on the Eq. (3) loss; the
      Fisher on its training data; replay = its own DDIM samples with replay.distillation_loss, as in training.
    """
    g, dt, toys = torch.Generator().manual_seed(seed), torch.float64, {}
    # idealised
    v = torch.randn(6, generator=g, dtype=dt)
    widths = [3, 8, 8, 1]
    th = torch.randn(sum(a * b + b for a, b in zip(widths[:-1], widths[1:])), generator=g, dtype=dt) * 0.7
    mlp = lambda t, x: _mlp(t, x, widths)
    ideal = {"linear-collinear": (lambda t, x: x @ t, torch.randn(6, generator=g, dtype=dt),
                                  torch.randn(8, 1, generator=g, dtype=dt) * v / v.norm()),
             "mlp-one-input": (mlp, th, torch.randn(1, 3, generator=g, dtype=dt)),
             "mlp-many-inputs": (mlp, th, torch.randn(16, 3, generator=g, dtype=dt))}
    for name, (fn, theta_star, x) in ideal.items():
        batch = (x, fn(theta_star, x).detach())                              # interpolating optimum
        J = torch.func.jacrev(lambda t: fn(t, x))(theta_star)                # (N, P)
        evals, evecs = torch.linalg.eigh(J.T @ J / x.shape[0])               # F = E_x[J J^T]
        mu = evals[-1].sqrt() * evecs[:, -1]                                 # F^ = mu mu^T = rho u u^T
        F = Rank1Fisher(mu, 1.0, float(mu @ theta_star))
        toys[name] = _toy(_FlatModel(fn, theta_star), _half_sq, _half_sq, dict(tr=batch, te=batch, rep=batch),
                          F, J.T @ J / x.shape[0], "idealised", g)
    # production: regression, then the denoiser (module initialisation from `seed`, global RNG untouched)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = lambda: torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                                          torch.nn.Tanh(), torch.nn.Linear(8, 1), torch.nn.Flatten(0)).to(dt)
        teacher, model, den = net(), net(), _TinyDenoiser().to(dt)
    x0 = torch.randn(3, generator=g, dtype=dt)
    draw = lambda n: x0 + 0.3 * torch.randn(n, 3, generator=g, dtype=dt)
    real = lambda x: (x, teacher(x).detach() + torch.randn(len(x), generator=g, dtype=dt))
    fit = real(draw(1024))
    opt = torch.optim.LBFGS(model.parameters(), max_iter=150, tolerance_grad=1e-10, line_search_fn="strong_wolfe")
    opt.step(lambda: (opt.zero_grad(), l := _half_sq(model, fit).mean(), l.backward())[1])  # theta*
    with torch.no_grad():
        x_f, x_r = draw(512), draw(512)
        fisher = (x_f, model(x_f) + torch.randn(512, generator=g, dtype=dt))   # y ~ p_theta*(y | x)
        rep = (x_r, model(x_r))                                                # the old model's outputs
    toys["mlp-regression"] = _production(model, _half_sq, _half_sq, dict(tr=real(draw(512)), te=real(draw(512)),
                                         rep=rep), fisher, "production", g)
    sched = diffusion.Schedule()
    means = 0.6 * torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]], dtype=dt)   # (3, 2) class means

    def real_x0(n):
        c = torch.randint(0, 3, (n,), generator=g)
        return means[c] + 0.1 * torch.randn(n, 2, generator=g, dtype=dt), c
    train = real_x0(1024)                                                    # the task's training data
    loss = diffusion.DenoisingLoss(sched)                                    # Eq. (3)
    opt = torch.optim.Adam(den.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, 1024, (256,), generator=g)
        opt.zero_grad()
        loss(den, (train[0][idx], train[1][idx]), g).mean().backward()                   # Eq. (3)
        opt.step()
    teacher = replay.frozen_copy(den)
    c = torch.randint(0, 3, (512,), generator=g)
    x_rep = diffusion.ddim_sample(teacher, sched, (512, 2), c, generator=g, dtype=dt)            # generated replay
    rep_loss = lambda m, b, generator=None: replay.distillation_loss(m, teacher, sched, b)
    sets = dict(tr=diffusion.with_noise(sched, real_x0(512), g), te=diffusion.with_noise(sched, real_x0(512), g),
                rep=diffusion.with_noise(sched, (x_rep, c), g))
    fisher = diffusion.with_noise(sched, (train[0][:512], train[1][:512]), g)
    toys["denoiser"] = _production(den, loss, rep_loss, sets, fisher, "production", g)
    return toys


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def measure(toy: dict, r: float, alpha: float) -> dict:
    """All the errors of the section comment at theta* + r d with inner step alpha, and the vectors."""
    th0, L, F = toy["theta_star"], toy["L"], toy["F"]
    delta = r * toy["d"]
    theta = th0 + delta
    I, II = maml_terms(theta, L["tr"], L["te"], alpha)                   # Eq. (10)
    I0, II0 = maml_terms(theta, L["tr"], L["te"], 0.0)                   # alpha -> 0: theta' = theta
    B = torch.func.grad(L["rep"])(theta)                                 # Eq. (9) (B), beta = 1
    g0 = torch.func.grad(L["te"])(th0)                                   # grad L^te(theta*), dropped by Eq. (20)
    Hd = torch.func.jvp(torch.func.grad(L["te"]), (th0,), (delta,))[1]   # Eq. (13): H^te(theta*) delta
    torch.nn.utils.vector_to_parameters(theta, toy["learner"].params)
    C = flatten(toy["learner"].term_C()).detach()                        # Eq. (9) (C) = F^ delta (lam = 1)
    torch.nn.utils.vector_to_parameters(th0, toy["learner"].params)
    ref = F.rho * F.matvec(delta)                                        # Eq. (16) with Eq. (22): rho F^ delta
    D, Da = I - alpha * II - B, I - alpha * II - I0                      # MAML gradient - (B); its alpha part
    lam, lam_a = float(C @ D / (C @ C)), float(C @ Da / (C @ C))         # least squares along (C)
    ar = alpha * F.rho
    return {"e11": _rel(I, B), "e11_alpha": _rel(I, I0), "e11_sample": _rel(I0, B),
            "e13": _rel(I0, Hd), "e13_taylor": _rel(I0 - g0, Hd), "e13_base": float(g0.norm() / Hd.norm()),
            "e16": _rel(II, ref), "e16_alpha0": _rel(II0, ref), "e16_alpha": float((II - II0).norm() / ref.norm()),
            "cos_II_C": float(II @ C / (II.norm() * C.norm())), "lam_eff": lam, "lam_ratio": lam / ar,
            "resid": float((D - lam * C).norm() / D.norm()), "lam_ratio_alpha": lam_a / ar,
            "resid_alpha": float((Da - lam_a * C).norm() / Da.norm()), "vectors": dict(I=I, II=II, B=B, C=C)}


def slope(xs, ys) -> float:
    """Least-squares slope of log y against log x: the order at which y vanishes (y ~ x^slope)."""
    lx, ly = torch.tensor(xs, dtype=torch.float64).log(), torch.tensor(ys, dtype=torch.float64).log()
    return float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())


def eq16_table(alpha: float = ALPHA, radii=(1.0, 1e-1, 1e-2, 1e-3), alphas=(1e-2, 1e-3), r0: float = 1e-2,
               toys: dict | None = None) -> dict:
    """name -> {kind, P, rho, top_eig, cos_u_v1, rank1_share, Eq. (15) errors at theta*, rows, orders, flip}.

    rows: measure() at each radius with `alpha` (plus e15_local), then at r0 with each of `alphas`.
    orders: log-log slopes in r over the radii <= 0.1 and in alpha at r0. flip: cos((II), (C)) and
    lam_eff / (alpha rho) at the smallest radius with delta -> -delta. toys: toy_problems() by default."""
    out = {}
    for name, toy in (toys or toy_problems()).items():
        th0, L, F, Ff = toy["theta_star"], toy["L"], toy["F"], toy["F_full"]
        H = lambda k, th: torch.func.hessian(L[k])(th)                             # dense, toy sizes only
        Htr, Hte = H("tr", th0), H("te", th0)
        evals, evecs = torch.linalg.eigh(Ff)
        rows = []
        for r, a in [(r, alpha) for r in radii] + [(r0, a) for a in alphas]:
            row = {"radius": r, "alpha": a, **measure(toy, r, a)}
            if a == alpha:
                row["e15_local"] = _rel(H("tr", th0 + r * toy["d"]), Htr)    # Eq. (15): H^tr(theta) ~ H^tr(theta*)
            rows.append(row)
        rs = [x for x in rows if x["alpha"] == alpha and x["radius"] <= 0.1]
        ra = [x for x in rows if x["radius"] == r0]
        fit = lambda rows, var, k: slope([x[var] for x in rows], [max(x[k], 1e-300) for x in rows])
        flip = measure(dict(toy, d=-toy["d"]), min(radii), alpha)
        out[name] = {"kind": toy["kind"], "P": th0.numel(), "rho": F.rho, "top_eig": float(evals[-1]),
                     "cos_u_v1": abs(float(F.u.double() @ evecs[:, -1])), "rank1_share": F.rho / float(evals.sum()),
                     "e15_tr_te": _rel(Htr, Hte), "e15_H_F": _rel(Hte, Ff), "e15_F_rank1": _rel(F.dense(), Ff),
                     "rows": rows, "flip": {k: flip[k] for k in ("cos_II_C", "lam_ratio")},
                     "orders": {**{k: fit(rs, "radius", k) for k in ("e13_taylor", "e13_base", "e15_local",
                                                                      "e16_alpha0", "e11")},
                                **{k + "|alpha": fit(ra, "alpha", k) for k in ("e11_alpha", "e16_alpha")}}}
    return out


def format_table(table: dict) -> str:
    cols = [("radius", "radius"), ("alpha", "alpha"), ("e11", "Eq11"), ("e11_alpha", "a-part"),
            ("e11_sample", "te/rep"), ("e13", "Eq13"), ("e13_taylor", "Taylor"), ("e13_base", "g*/Hd"),
            ("e15_local", "Eq15 H(th)"), ("e16", "Eq16"), ("e16_alpha0", "(a->0)"), ("cos_II_C", "cos(II,C)"),
            ("lam_ratio", "lam/(a rho)"), ("resid", "resid"), ("lam_ratio_alpha", "a-part lam/(a rho)"),
            ("resid_alpha", "resid")]
    w = [max(10, len(h) + 1) for _, h in cols]
    cell = lambda k, v, n: f"{v:>{n}.3f}" if k == "cos_II_C" else f"{v:>{n}.2e}"
    lines = []
    for name, t in table.items():
        lines += [f"\n{name} ({t['kind']}): P {t['P']}, rho {t['rho']:.3e}, top eigenvalue of F {t['top_eig']:.3e}, "
                  f"cos(u, top eigenvector) {t['cos_u_v1']:.3f}, rank-1 share {t['rank1_share']:.3f}",
                  f"  Eq15 at theta*: ||H^tr-H^te||/||H^te|| {t['e15_tr_te']:.2e}, ||H^te-F||/||F|| "
                  f"{t['e15_H_F']:.2e}, ||F^-F||/||F|| {t['e15_F_rank1']:.2e}",
                  "".join(f"{h:>{n}}" for (_, h), n in zip(cols, w))]
        lines += ["".join(cell(k, row[k], n) if k in row else " " * n for (k, _), n in zip(cols, w))
                  for row in t["rows"]]
        lines.append("  orders (log-log slopes; in r over r <= 0.1): " +
                     ", ".join(f"{k} {v:+.2f}" for k, v in t["orders"].items()))
        row = [x for x in t["rows"] if x["alpha"] == ALPHA][-1]
        lines.append(f"  lam_eff at r {row['radius']:.0e}, alpha {ALPHA:.0e}: {row['lam_eff']:+.3e} = "
                     f"{row['lam_ratio']:+.3g} alpha rho (residual {row['resid']:.2g}); with delta -> -delta: "
                     f"{t['flip']['lam_ratio']:+.3g} alpha rho, cos((II),(C)) {t['flip']['cos_II_C']:+.3f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    runfiles.Parser(description=__doc__.split("\n\n")[0] + " Prints the tables; no options.").parse_args(argv)
    print("Section 3.3 on toys, float64: relative errors of Eq. (11), (13), (15), (16), cos((II), (C)) with (C) =\n"
          "TrustRegionLearner.term_C, and (I) - alpha (II) = (B) + lam_eff F^ delta (see derivation.py's docstring).\n"
          "Rows: r = ||theta - theta*|| at alpha = 1e-4 (Table 3's inner lr), then alpha = 1e-2, 1e-3 at r = 1e-2.\n"
          "The experiments use lam > 0: " + ", ".join(f"{k} {v:g}" for k, v in LAM_TABLES.items()) + ".")
    torch.set_num_threads(1)                     # toy sizes: a second thread only adds contention (measured 6x)
    print(format_table(eq16_table()))


if __name__ == "__main__":
    runfiles.run(main)  # Ctrl-C: one line, exit 130 (runfiles' endings)
