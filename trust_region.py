"""Trust region continual learning: the Eq. (8) objective, its gradient term by term (Eq. 9), the
training step used by finetune / ewc / replay / tr, and the MAML terms of Eq. (10) with the toy
verification of Eq. (11) and Eq. (16).

Paper Section 3.2-3.3 and Appendix B.

Notation
    theta                 the flat parameter vector (P,), fisher.flat_params order
    L_t(theta; D_t)       current-task loss: mean over the batch of the per-sample Eq. (3) loss
    L_i(theta; D~_i)      replay loss on generated samples of old tasks (replay.py)
    F_i = c*_i mu_i mu_i^T = rho_i u_i u_i^T, rank-1 Fisher of old task i at theta_i* (fisher.py)
    Eq. (8):  J(theta) = L_t(theta; D_t) + beta L_Replay(theta) + lam L_EWC(theta),
              L_EWC = 1/2 sum_i (theta - theta_i*)^T F_i (theta - theta_i*)          (Eq. 5)
    Eq. (9):  grad J = (A) grad L_t  +  (B) beta grad L_Replay  +  (C) lam sum_i F_i (theta - theta_i*)
    Eq. (6):  trust-region value  sum_i (theta - theta_i*)^T F_i (theta - theta_i*)
    Eq. (10): one-step MAML, theta' = theta - alpha grad L^tr(theta):
              (I)  = grad L^te(theta')          (II) = H^tr(theta) grad L^te(theta')
              d/dtheta L^te(theta') = (I) - alpha (II)
    Eq. (11): (I) ~ (B);   Eq. (16): (II) ~ F^2 (theta - theta*) = rho F (theta - theta*) ~ (C)

The efficient step. L_t and L_Replay come from ONE network call on both batches (joint_mean_losses), and
(A) + (B) from ONE backward pass of L_t + beta L_Replay; (C) is added to the
gradients analytically, for all past tasks at once and per parameter tensor p (no flat copy of theta is
made per step). With M = [mu_1; ...; mu_K] (K, P), M_p its (K, n_p) block of parameter p, and one anchor
theta_ref (the parameters when the newest Fisher was added),
    mu_k^T (theta - theta_k*) = sum_p M_p[k] (theta_p - ref_p) + (mu_k^T theta_ref - s*_k)
so proj = sum_p M_p (theta_p - ref_p) + offset sums GEMVs over small-magnitude vectors (accurate in float32;
the offsets are float64 scalars), and (C)_p = lam M_p^T (c* * proj). No per-task copy of theta* is kept;
`gradient_terms` keeps the plain per-Fisher form that the tests compare against. A diagonal Fisher
(classic EWC, `fisher.DiagonalFisher`) is applied the same way: (C)_p = lam sum_k f_kp (theta_p - theta*_kp).

No host synchronisation: `step` returns its logged values as 0-d tensors on the device; a caller that
reads them every `log_every` steps syncs once per log, not once per step.

Deviations from the paper
- Term (B) is beta times the gradient of the MEAN replay loss over a replay batch drawn evenly across
  old tasks (replay ratio 1.0: as many replay samples as current ones), i.e. (beta / (t-1)) sum_i
  grad L_i, as in the authors' implementation (reference notes §2); Eq. (9) writes the sum over tasks.
  The factor 1/(t-1) is absorbed into beta.
- The MAML toy verification uses the true Fisher of a unit-variance Gaussian likelihood (= the
  Gauss-Newton matrix), which equals the Hessian at an interpolating optimum; see `toy_problems`.
"""
from __future__ import annotations


import torch

import diffusion
from fisher import DiagonalFisher, Rank1Fisher, fisher_from_state_dict, flat_params, flatten, params_list

# -----------------------------------------------------------------------------
# Eq. (8)-(9), plain forms (what the tests verify the fast step against)


def _mean_loss(fn, model, batch, generator):
    return fn(model, batch, generator).mean()


def joint_mean_losses(model, loss_fn, replay_loss_fn, batch, replay_batch, generator):
    """(L_t, L_Replay), the two mean losses of Eq. (8), from ONE network call on the current and the replay batch
    together, for losses that expose `regression` (diffusion.DenoisingLoss, replay.ReplayLoss). The networks are
    per-sample (GroupNorm, no batch statistics), so this equals two calls up to float round-off; the noise is drawn
    in the same order (current, then replay). On one CPU core a batch of 256 costs less than two of 128: replay and tr
    steps are 1.15-1.19x faster at batch 128 (results/cpu_speed, meta_baselines.py --bench --two-calls)."""
    cur = loss_fn.regression(batch, generator)                           # (x_t, t, cond, target) of D_t
    rep = replay_loss_fn.regression(replay_batch, generator)             # ... of the replay batch
    x_t, t, cond, target = (None if a is None else torch.cat([a, b]) for a, b in zip(cur, rep))
    err = diffusion.squared_error(model(x_t, t, cond), target)           # (B + B_rep,)
    return err[: len(cur[0])].mean(), err[len(cur[0]):].mean()


def forward_precision(device: torch.device, bf16: bool):
    """The context the learners run their forward passes in: bf16 autocast (issue 11's option; the backward
    pass, the optimizer, term (C) and the parameters stay float32) or, with bf16=False, plain float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def objective(model, batch, replay_batch, loss_fn, replay_loss_fn, beta: float, lam: float,
              fishers: list[Rank1Fisher], generator=None) -> torch.Tensor:
    """Eq. (8): L_t + beta L_Replay + lam * 1/2 sum_i (theta - theta_i*)^T F_i (theta - theta_i*)."""
    J = _mean_loss(loss_fn, model, batch, generator)                                   # L_t
    if beta and replay_batch is not None:
        J = J + beta * _mean_loss(replay_loss_fn, model, replay_batch, generator)       # beta L_Replay
    if lam and fishers:
        theta = flatten(params_list(model))                                             # differentiable (P,)
        J = J + lam * sum(F.penalty(theta) for F in fishers).to(J.dtype)                # lam L_EWC, Eq. (5)
    return J


def gradient_terms(model, batch, replay_batch, loss_fn, replay_loss_fn, beta: float, lam: float,
                   fishers: list[Rank1Fisher], generator=None) -> dict[str, torch.Tensor]:
    """Eq. (9) term by term, each a flat (P,) vector: A, B, C."""
    plist = params_list(model)
    A = flatten(torch.autograd.grad(_mean_loss(loss_fn, model, batch, generator), plist))  # (A) current-task fit
    if beta and replay_batch is not None:
        L_rep = _mean_loss(replay_loss_fn, model, replay_batch, generator)
        B = beta * flatten(torch.autograd.grad(L_rep, plist))                               # (B) beta x replay grad
    else:
        B = torch.zeros_like(A)
    theta = flat_params(model)
    C = torch.zeros_like(A)
    for F in fishers if lam else []:
        C = C + lam * F.grad(theta).to(A.dtype)                                     # (C) lam F_i (theta - theta_i*)
    return {"A": A, "B": B, "C": C}


def trust_region_value(fishers: list[Rank1Fisher], theta: torch.Tensor) -> float:
    """Eq. (6) left-hand side: sum_i (theta - theta_i*)^T F_i (theta - theta_i*)."""
    return float(sum(2 * F.penalty(theta) for F in fishers)) if fishers else 0.0

# -----------------------------------------------------------------------------
# the penalty the training step applies: term (C) per parameter tensor


class Rank1Penalty:
    """All past tasks' rank-1 Fishers for the training step (see the module docstring for the derivation).

    M (K, P) is stored once: each Rank1Fisher's mu becomes a view of its row, each parameter sees its
    (K, n_p) block as a view. theta_ref: the anchor, one tensor per parameter.
    """

    def __init__(self, fishers: list[Rank1Fisher], theta_ref: list[torch.Tensor]):
        self.M = torch.stack([F.mu for F in fishers])                                       # (K, P)
        for k, F in enumerate(fishers):
            F.mu = self.M[k]
        sizes = [r.numel() for r in theta_ref]
        self.blocks = list(torch.split(self.M, sizes, dim=1))                               # M_p (K, n_p) views
        self.theta_ref = [r.detach().clone() for r in theta_ref]                            # ref_p
        ref = torch.cat([r.reshape(-1) for r in self.theta_ref])
        self.offset = torch.stack([F.proj(ref) for F in fishers])                           # (K,) float64
        self.c_star = torch.tensor([F.c_star for F in fishers], dtype=torch.float64, device=self.M.device)

    def proj(self, params: list[torch.Tensor]) -> torch.Tensor:
        """mu_k^T (theta - theta_k*) for every past task k: (K,) float64."""
        diffs = torch._foreach_sub([p.detach() for p in params], self.theta_ref)             # theta_p - ref_p
        return sum((M_p @ d.reshape(-1)).double() for M_p, d in zip(self.blocks, diffs)) + self.offset

    def terms(self, params: list[torch.Tensor], lam: float):
        """([(C)_p = lam M_p^T (c* proj)], Eq. (6) value sum_k c*_k proj_k^2) from one projection."""
        proj = self.proj(params)                                                            # (K,)
        w = (lam * self.c_star * proj).to(self.M.dtype)                                     # (K,)
        C = [(w @ M_p).view_as(p) for M_p, p in zip(self.blocks, params)]                   # Eq. (9) (C)
        return C, (self.c_star * proj ** 2).sum()                                           # Eq. (6)


class DiagonalPenalty:
    """Classic EWC (Kirkpatrick et al. 2017): F_k = diag(f_k), kept with its own theta_k* per past task."""

    def __init__(self, fishers: list[DiagonalFisher], params: list[torch.Tensor]):
        sizes = [p.numel() for p in params]
        self.f = [[v.view_as(p) for v, p in zip(torch.split(F.diag, sizes), params)] for F in fishers]
        self.theta_star = [[v.view_as(p) for v, p in zip(torch.split(F.theta_star, sizes), params)] for F in fishers]

    def terms(self, params: list[torch.Tensor], lam: float):
        """([(C)_p = lam sum_k f_kp (theta_p - theta*_kp)], Eq. (6) value sum_k sum_p f_kp (theta_p - theta*_kp)^2)."""
        C = [torch.zeros_like(p) for p in params]
        value = torch.zeros((), dtype=torch.float64, device=params[0].device)
        for f, star in zip(self.f, self.theta_star):
            diffs = torch._foreach_sub([p.detach() for p in params], star)                  # theta_p - theta*_kp
            fd = torch._foreach_mul(f, diffs)                                               # f_kp (theta_p - theta*_kp)
            torch._foreach_add_(C, fd, alpha=lam)                                           # Eq. (9) (C)
            value = value + sum((a * d).sum().double() for a, d in zip(fd, diffs))          # Eq. (6)
        return C, value


def grad_norm_and_clip(params: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """The total gradient norm (a 0-d tensor, no host sync); scales the gradients to max_norm if it is set
    and exceeded (torch.nn.utils.clip_grad_norm_'s rule, coefficient max_norm / (norm + 1e-6))."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm:
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm

# -----------------------------------------------------------------------------
# the training step: finetune (beta = lam = 0), ewc (beta = 0), replay (lam = 0), tr


class TrustRegionLearner:
    """One Adam step on Eq. (8) per call. The same interface as meta_baselines' learners.

    loss_fn(model, batch, generator) -> (B,), replay_loss_fn(model, replay_batch, generator) -> (B,).
    """

    def __init__(self, model, loss_fn, replay_loss_fn=None, beta: float = 1.0, lam: float = 0.0,
                 lr: float = 2e-4, grad_clip: float | None = None, bf16: bool = False):
        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if beta > 0 and replay_loss_fn is None:
            raise ValueError("beta > 0 needs a replay_loss_fn")
        self.model, self.loss_fn, self.replay_loss_fn = model, loss_fn, replay_loss_fn
        self.beta, self.lam, self.grad_clip, self.bf16 = beta, lam, grad_clip, bf16
        self.params = params_list(model)
        self.opt = torch.optim.Adam(self.params, lr=lr, fused=self.params[0].is_cuda)  # fused: one kernel on CUDA
        # one network call for both batches when both losses can say what they regress onto (joint_mean_losses)
        self.joint = all(hasattr(f, "regression") for f in (loss_fn, replay_loss_fn))
        self.fishers: list[Rank1Fisher | DiagonalFisher] = []
        self.penalty: Rank1Penalty | DiagonalPenalty | None = None

    def add_fisher(self, F: Rank1Fisher | DiagonalFisher, theta_ref: list[torch.Tensor] | None = None):
        """Register a finished task's Fisher; its theta* is the current parameters (the anchor of Rank1Penalty).
        theta_ref (per-parameter tensors) replaces the anchor when a checkpoint is loaded."""
        if self.fishers and type(F) is not type(self.fishers[0]):
            raise ValueError(f"cannot mix {type(self.fishers[0]).__name__} and {type(F).__name__} penalties")
        F.to(self.params[0].device)
        self.fishers.append(F)
        if self.lam > 0:
            if isinstance(F, DiagonalFisher):
                self.penalty = DiagonalPenalty(self.fishers, self.params)
            else:
                ref = self.params if theta_ref is None else [r.to(self.params[0].device) for r in theta_ref]
                self.penalty = Rank1Penalty(self.fishers, ref)

    def term_C(self) -> list[torch.Tensor]:
        """Eq. (9) term (C) = lam sum_i F_i (theta - theta_i*) at the current parameters, per parameter tensor:
        exactly what `step` adds to the gradients."""
        if self.penalty is None:
            return [torch.zeros_like(p) for p in self.params]
        return self.penalty.terms(self.params, self.lam)[0]

    def step(self, batch, replay_batch=None, generator=None, log_terms: bool = False) -> dict:
        """One update -> dict of 0-d tensors (loss, loss_cur, grad_norm, [loss_replay], [trust_region]).
        log_terms=True also logs ||A||, ||B||, ||C|| of Eq. (9) (costs a second backward pass)."""
        self.opt.zero_grad(set_to_none=True)
        use_replay = self.beta > 0 and replay_batch is not None
        with forward_precision(self.params[0].device, self.bf16):
            if use_replay and self.joint:
                L_cur, L_rep = joint_mean_losses(self.model, self.loss_fn, self.replay_loss_fn, batch, replay_batch,
                                                 generator)                                 # L_t, L_Replay
            else:
                L_cur = _mean_loss(self.loss_fn, self.model, batch, generator)             # L_t
                if use_replay:
                    L_rep = _mean_loss(self.replay_loss_fn, self.model, replay_batch, generator)  # L_Replay
            loss, logs = L_cur, {}
            if use_replay:
                loss = loss + self.beta * L_rep
                logs["loss_replay"] = L_rep.detach()
        if log_terms:
            gA = torch.autograd.grad(L_cur, self.params, retain_graph=use_replay)          # (A)
            logs["norm_A"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gA)))
            for p, a in zip(self.params, gA):
                p.grad = a
            if use_replay:
                gB = torch.autograd.grad(self.beta * L_rep, self.params)                    # (B)
                logs["norm_B"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gB)))
                torch._foreach_add_([p.grad for p in self.params], gB)
        else:
            loss.backward()                                                                # (A) + (B), one pass
        if self.penalty is not None:
            C, logs["trust_region"] = self.penalty.terms(self.params, self.lam)            # (C), analytic; Eq. (6)
            torch._foreach_add_([p.grad for p in self.params], C)
            if log_terms:
                logs["norm_C"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(C)))
        logs["grad_norm"] = grad_norm_and_clip(self.params, self.grad_clip)
        self.opt.step()
        logs["loss"], logs["loss_cur"] = loss.detach(), L_cur.detach()
        return logs

    def state_dict(self) -> dict:
        ref = self.penalty.theta_ref if isinstance(self.penalty, Rank1Penalty) else None
        return {"opt": self.opt.state_dict(), "fishers": [F.state_dict() for F in self.fishers], "theta_ref": ref}

    def load_state_dict(self, sd: dict):
        self.opt.load_state_dict(sd["opt"])
        self.fishers, self.penalty = [], None
        for f in sd["fishers"]:
            self.add_fisher(fisher_from_state_dict(f), sd["theta_ref"])

# -----------------------------------------------------------------------------
# Eq. (10): the MAML terms, exactly, with Hessian-vector products


def maml_terms(theta: torch.Tensor, support_loss, query_loss, alpha: float):
    """(I) = grad L^te(theta'), (II) = H^tr(theta) (I), theta' = theta - alpha grad L^tr(theta).

    support_loss, query_loss: functions of a flat (P,) vector returning a scalar.
    """
    th = theta.detach().requires_grad_(True)
    g_tr = torch.autograd.grad(support_loss(th), th, create_graph=True)[0]     # grad L^tr(theta)
    th_adapted = (th - alpha * g_tr).detach().requires_grad_(True)             # theta' (inner SGD step)
    I = torch.autograd.grad(query_loss(th_adapted), th_adapted)[0]             # (I)
    II = torch.autograd.grad(g_tr, th, grad_outputs=I)[0]                      # (II) = H^tr I, an HVP
    return I.detach(), II.detach()

# -----------------------------------------------------------------------------
# Section 3.3 measured on toys. At theta = theta* + delta, delta = r d (d a fixed unit vector), inner step
# alpha, support (tr), query (te) and replay (rep) sets, and the toy's rank-1 F^ = rho u u^T:
#   Eq. (11)  (I) = grad L^te(theta')  vs  (B) = grad L^rep(theta)   (beta = 1)
#   Eq. (13)  grad L^te(theta)  vs  H^te(theta*) delta   (Eq. 20 with grad L^te(theta*) dropped)
#   Eq. (15)  H^tr(theta) vs H^tr(theta*) vs H^te(theta*) vs F (full Fisher of the Fisher samples) vs F^
#   Eq. (16)  (II)  vs  rho F^ delta  vs  (C) = F^ delta, (C) from TrustRegionLearner.term_C with lam = 1
#   update    (I) - alpha (II) = (B) + lam_eff F^ delta + residual (least squares in lam_eff)
# Errors are relative (||a - b|| / ||b||; Frobenius for matrices); `slope` fits their order.

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
    import replay                                # only the toys need these
    from diffusion import Schedule, batch_loss, ddim_sample, with_noise
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
    sched = Schedule()
    means = 0.6 * torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]], dtype=dt)   # (3, 2) class means

    def real_x0(n):
        c = torch.randint(0, 3, (n,), generator=g)
        return means[c] + 0.1 * torch.randn(n, 2, generator=g, dtype=dt), c
    train = real_x0(1024)                                                    # the task's training data
    opt = torch.optim.Adam(den.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, 1024, (256,), generator=g)
        opt.zero_grad()
        batch_loss(den, sched, (train[0][idx], train[1][idx]), g).mean().backward()      # Eq. (3)
        opt.step()
    teacher = replay.frozen_copy(den)
    c = torch.randint(0, 3, (512,), generator=g)
    x_rep = ddim_sample(teacher, sched, (512, 2), c, generator=g, dtype=dt)            # generated replay
    loss = lambda m, b, generator=None: batch_loss(m, sched, b)
    rep_loss = lambda m, b, generator=None: replay.distillation_loss(m, teacher, sched, b)
    sets = dict(tr=with_noise(sched, real_x0(512), g), te=with_noise(sched, real_x0(512), g),
                rep=with_noise(sched, (x_rep, c), g))
    fisher = with_noise(sched, (train[0][:512], train[1][:512]), g)
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


if __name__ == "__main__":
    print("Section 3.3 on toys, float64: relative errors of Eq. (11), (13), (15), (16), cos((II), (C)) with (C) =\n"
          "TrustRegionLearner.term_C, and (I) - alpha (II) = (B) + lam_eff F^ delta (see trust_region.py, 'Section\n"
          "3.3 measured'). Rows: r = ||theta - theta*|| at alpha = 1e-4 (Table 3's inner lr), then alpha = 1e-2, 1e-3\n"
          "at r = 1e-2.\n"
          "The experiments use lam > 0: " + ", ".join(f"{k} {v:g}" for k, v in LAM_TABLES.items()) + ".")
    torch.set_num_threads(1)                     # toy sizes: a second thread only adds contention (measured 6x)
    print(format_table(eq16_table()))
