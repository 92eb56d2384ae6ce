"""Denoising diffusion: the forward process, the denoising loss (epsilon or x0 form) and the DDIM sampler.

Paper Section 2.1, Eq. (1)-(3); DDIM is Song et al. (2021a). The same code serves images
(B, C, H, W) and action sequences (B, S, D_a): every function works on any shape (B, ...) and passes
the conditioning (class labels or observation windows) straight through to the network.

Notation (paper Section 2.1)
    beta_t                      linear noise schedule, t = 0 .. T-1 (T = 1000)
    alpha_t = 1 - beta_t
    alpha_bar_t = prod_{s<=t} alpha_s
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I)           Eq. (2)
    L_simple = E_{t, x0, eps} || eps - eps_theta(x_t, t) ||^2                            Eq. (3)

Prediction type (``Schedule.prediction``, the run's ``--prediction``; diffusers' ``prediction_type``):
    "epsilon" (the paper): the network predicts the noise, f = eps_hat, and the loss is Eq. (3).
    "sample": the network predicts the clean data, f = x0_hat, and the loss is
        L_x0 = E || x0 - f(x_t, t) ||^2                                                   (x0 form)
The two are the same family under a change of variables, Eq. (2) solved for the other unknown:
    x0_hat  = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t)        eps_hat = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)
so for the same x_t, ||eps - eps_hat||^2 = SNR(t) ||x0 - x0_hat||^2 with SNR(t) = ab_t / (1 - ab_t): the x0 loss
is the epsilon loss weighted by 1 / SNR(t), which puts weight on the noisy steps (large t) where the epsilon loss
gives a network little signal about x0 (tests/test_diffusion.py checks the identity in float64). Everything that
differentiates "the loss" (the learners of training, replay, both Fishers, FTML/VR-MCL, derivation.py's toy) calls
``DenoisingLoss``, the one name of Eq. (3), and so follows the run's choice; distillation compares student and
teacher outputs, which are in the same form, with DenoisingLoss.error.

The network is called as ``model(x_t, t, cond)`` and returns its prediction (eps_hat or x0_hat) with x_t's shape.
A *batch* is a tuple ``(x0, cond)`` or ``(x0, cond, t, eps)``; the second form carries pre-drawn
noise, which makes the per-sample loss a deterministic function of the parameters (needed by the
rank-1 Fisher's forward-mode pass and by vmap in fisher.py).

Deviations from the paper
- Eq. (3) is the *sum* of squares; here the per-sample loss is the *mean* over the non-batch dimensions, as in the
  authors' code (Teachable-AI-Lab/diffusion-continual-learning, `src/parameter_scoring.py`: an MSE averaged over
  pixels) and in diffusers. It rescales the loss by 1/dim, which Adam ignores but lambda does not: the paper's
  lambda values (Tables 3-4) are for this mean form.
- Timesteps are 0-based (t in {0..999}), as in diffusers; the paper writes t = 1..T.
- ``prediction="sample"`` is ours (the paper trains epsilon only): at a CPU budget it learns CW10 tasks the epsilon
  form does not (results/cw10_curves_cpu). The default, "epsilon", is the paper.
- The schedule is fixed to diffusers' defaults (DDPMScheduler: linear betas 1e-4..0.02, 1000 steps); DDIM uses
  "leading" spacing (980, 960, ..., 0 for 50 steps) and alpha_bar_prev = 1 at the last step, as diffusers'
  DDIMScheduler. The DDIM step follows DDIMScheduler.step's defaults: x0_hat is clipped to [-1, 1], and the
  direction term uses the network's eps_hat as predicted (for "sample": the eps_hat implied by the unclipped x0_hat,
  as diffusers).
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

# -----------------------------------------------------------------------------
# schedule, Eq. (1)-(2)


PREDICTIONS = ("epsilon", "sample")  # what the network predicts: the noise (Eq. 3, the paper) | the clean x0


class Schedule:
    """Linear beta schedule of the variance-preserving forward process, Eq. (1), and the network's prediction type.

    Buffers are float64 on the CPU; ``coef(t, x)`` gathers them for a batch of timesteps and
    moves them to x's device and dtype, broadcast to x's shape.
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 prediction: str = "epsilon"):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.num_steps, self.prediction = num_steps, prediction
        self.betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)  # Eq. (1) beta_t
        self.alphas = 1.0 - self.betas                                                    # alpha_t
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)                                 # alpha_bar_t

    def coef(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] as a (B, 1, ..., 1) tensor on like's device/dtype."""
        out = values.to(like.device)[t.to(like.device)].to(like.dtype)  # (B,)
        return out.reshape(-1, *([1] * (like.dim() - 1)))                # (B, 1, ..., 1)


def q_sample(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. (2): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.  x0, eps: (B, ...); t: (B,)."""
    ab = sched.coef(sched.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps  # Eq. (2)


def draw_noise(sched: Schedule, x0: torch.Tensor, generator: torch.Generator | None = None):
    """t ~ U{0..T-1} (B,) and eps ~ N(0, I) with x0's shape, both from ``generator``.

    The generator must live on x0's device (torch requires it); pass None for the global RNG.
    """
    B = x0.shape[0]
    t = torch.randint(0, sched.num_steps, (B,), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return t, eps


# -----------------------------------------------------------------------------
# loss, Eq. (3) and its x0 form


class DenoisingLoss:
    """Eq. (3), the one denoising loss, bound to a schedule (and so to its prediction type):

        loss(model, batch, generator=None) -> (B,)   per-sample loss of a batch (x0, cond) or (x0, cond, t, eps)
        loss.regression(batch, generator)          -> (x_t, t, cond, target): the regression the network solves
        DenoisingLoss.error(out, target)           -> (B,): the per-sample squared error, a mean over dimensions

    epsilon: ||eps - eps_theta(x_t, t, cond)||^2 / dim (Eq. 3);  sample: ||x0 - f_theta(x_t, t, cond)||^2 / dim.
    x0: (B, ...); cond: whatever the model takes (labels (B,), observations (B, O, D_o), or None); t, eps: pre-drawn
    noise, or drawn from ``generator`` when the batch is (x0, cond). `regression` lets a learner run the network
    once on the current and the replay batch together (trust_region.joint_mean_losses), and replay.ReplayLoss
    regress onto the teacher's output with the same error."""

    def __init__(self, sched: Schedule):
        self.sched = sched

    def __call__(self, model, batch, generator=None) -> torch.Tensor:
        x_t, t, cond, target = self.regression(batch, generator)
        return self.error(model(x_t, t, cond), target)      # Eq. (3) | x0 form, (B,)

    def regression(self, batch, generator=None):
        """A batch (x0, cond) or (x0, cond, t, eps) as the regression the network solves: (x_t, t, cond, target), its
        inputs and the output it is fitted to (Eq. 3's eps, or x0 in the x0 form). t, eps are drawn when absent."""
        sched = self.sched
        if len(batch) == 2:
            x0, cond = batch
            t, eps = draw_noise(sched, x0, generator)
        elif len(batch) == 4:
            x0, cond, t, eps = batch
        else:
            raise ValueError(f"a batch is (x0, cond) or (x0, cond, t, eps); got a tuple of {len(batch)}")
        x_t = q_sample(sched, x0, t, eps)                       # Eq. (2)
        target = eps if sched.prediction == "epsilon" else x0   # Eq. (3) | x0 form
        return x_t, t, cond, target

    @staticmethod
    def error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample squared error, a mean over the non-batch dimensions (see Deviations). (B,)"""
        return (target - out).pow(2).flatten(1).mean(dim=1)


def with_noise(sched: Schedule, batch, generator=None):
    """(x0, cond) -> (x0, cond, t, eps) with noise drawn now, so the loss is deterministic."""
    x0, cond = batch[0], batch[1]
    t, eps = draw_noise(sched, x0, generator)
    return x0, cond, t, eps


# -----------------------------------------------------------------------------
# DDIM sampler (Song et al. 2021a)


def x0_eps(sched: Schedule, out: torch.Tensor, x_t: torch.Tensor, ab: float):
    """(x0_hat, eps_hat) from the network's output at x_t, with ab = alpha_bar_t, whatever its prediction type.

    epsilon: x0_hat = (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab)          DDIM Eq. 12, "predicted x0"
    sample:  eps_hat = (x_t - sqrt(ab) x0_hat) / sqrt(1 - ab)          Eq. (2) solved for eps
    """
    if sched.prediction == "epsilon":
        return (x_t - math.sqrt(1 - ab) * out) / math.sqrt(ab), out   # DDIM Eq. 12
    return out, (x_t - math.sqrt(ab) * out) / math.sqrt(1 - ab)       # Eq. (2) for eps


def ddim_timesteps(num_train: int = 1000, steps: int = 50) -> torch.Tensor:
    """'Leading' spacing, descending: for 1000/50 -> 980, 960, ..., 20, 0."""
    if not 1 <= steps <= num_train:
        raise ValueError(f"DDIM steps must be in 1..{num_train}, got {steps}")
    ratio = num_train // steps
    return torch.arange(steps - 1, -1, -1, dtype=torch.long) * ratio


@torch.no_grad()
def ddim_sample(model, sched: Schedule, shape, cond, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None, progress: bool = False,
                device=None, dtype=torch.float32) -> torch.Tensor:
    """Draw x0 of ``shape`` = (B, ...) from x_T ~ N(0, I) with DDIM; deterministic given generator.

    One step from t to t_prev = t - T/steps (ab = alpha_bar; ab_prev = 1 after the last step):
        x0_hat, eps_hat from the network's output (x0_eps), x0_hat clipped to [-1, 1]  DDIM Eq. 12
        sigma_t  = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)      DDIM Eq. 16
        x_prev   = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma_t^2) eps_hat + sigma_t z
    With eta = 0 the map x_T -> x0 is deterministic. As diffusers' DDIMScheduler.step with its defaults
    (clip_sample=True, use_clipped_model_output=False): x0_hat is clipped, but the direction term keeps the
    network's eps_hat (it is not recomputed from the clipped x0_hat). For "sample", the network's x0_hat is
    clipped and eps_hat is computed from the unclipped one (diffusers' DDIMScheduler.step does the same).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)  # x_T
    ts = ddim_timesteps(sched.num_steps, steps)
    ratio = sched.num_steps // steps
    B = shape[0]
    for t in tqdm(ts.tolist(), desc="DDIM", leave=False, disable=not progress):
        t_batch = torch.full((B,), t, dtype=torch.long, device=device)
        ab = float(sched.alpha_bar[t])                                          # alpha_bar_t
        ab_prev = float(sched.alpha_bar[t - ratio]) if t - ratio >= 0 else 1.0  # alpha_bar_{t_prev}
        x0_hat, eps_hat = x0_eps(sched, model(x, t_batch, cond), x, ab)         # DDIM Eq. 12, "predicted x0"
        x0_hat = x0_hat.clamp(-1.0, 1.0)                                        # diffusers clip_sample=True
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)  # DDIM Eq. 16
        x = math.sqrt(ab_prev) * x0_hat + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps_hat  # DDIM Eq. 12
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return x
