"""Trust region continual learning: the Eq. (8) objective, its gradient term by term (Eq. 9), the
training step used by finetune / ewc / replay / tr, and the MAML terms of Eq. (10). Section 3.3's claims
that the MAML terms approximate Eq. (9)'s (Eq. 11, 13, 15, 16) are measured on toys by derivation.py.

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
  grad L_i, as in the authors' implementation (Teachable-AI-Lab/diffusion-continual-learning, `src/gr.py`);
  Eq. (9) writes the sum over tasks. The factor 1/(t-1) is absorbed into beta.
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
    steps are 1.15-1.19x faster at batch 128 (results/cpu_speed, bench.py step --two-calls)."""
    cur = loss_fn.regression(batch, generator)                           # (x_t, t, cond, target) of D_t
    rep = replay_loss_fn.regression(replay_batch, generator)             # ... of the replay batch
    x_t, t, cond, target = (None if a is None else torch.cat([a, b]) for a, b in zip(cur, rep))
    err = diffusion.DenoisingLoss.error(model(x_t, t, cond), target)     # (B + B_rep,)
    return err[: len(cur[0])].mean(), err[len(cur[0]):].mean()


def forward_precision(device: torch.device, bf16: bool):
    """The context the learners run their forward passes in: bf16 autocast (`--bf16`, ours; the backward
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
