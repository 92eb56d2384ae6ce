"""The six methods by name: the registry, the learner factory, and the weight average (`--ema`).

    METHODS        finetune, ewc, replay, tr (trust_region.TrustRegionLearner: Eq. 8 with beta, lam switched on or
                   off), ftml, vrmcl (meta_baselines.py); the paper's Section 4 baselines and its method
    uses_replay    the methods that train on a generated replay batch beside the current one
    uses_fisher    the methods with a Fisher penalty (ewc: a diagonal or rank-1 Fisher; tr: rank-1, Eq. 9 term C)
    replay_kind    "distill" (replay, tr) or "generative" (ftml, vrmcl): which replay loss (replay.ReplayLoss)
    make_learner   the learner of a method; its arguments are named one by one (each script's Config passes its
                   fields, experiment.new_learner)
    WeightAverage  an average of the weights (ours, off by default), wrapped around any learner

Every learner has step(batch, replay_batch=None, generator=None, log_terms=False) -> dict of 0-d tensors,
add_fisher (the Fisher methods), opt (its Adam), replay_loss_fn, state_dict and load_state_dict.
"""
import contextlib

import torch

import diffusion
import fisher
import meta_baselines
import replay
import trust_region

METHODS = ("finetune", "ewc", "replay", "tr", "ftml", "vrmcl")


def _check(method):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def uses_replay(method):
    _check(method)
    return method in ("replay", "tr", "ftml", "vrmcl")


def uses_fisher(method):
    _check(method)
    return method in ("ewc", "tr")


def replay_kind(method):
    """Which replay loss a method uses: "distill" for replay/tr (Section 4: generative distillation,
    Masip et al. 2025); "generative" (true eps) for ftml/vrmcl, whose experience replay the paper replaces
    with generated samples that join the support and query sets as ordinary data. None without replay."""
    _check(method)
    if not uses_replay(method):
        return None
    return "distill" if method in ("replay", "tr") else "generative"


def make_learner(method, model, sched, *, lr=2e-4, beta=1.0, lam=0.0, inner_lr=1e-4, vr_momentum=0.15,
                 second_order=False, grad_clip=None, bf16=False, ema=0.0):
    """The learner of `method` for a diffusion model: the Eq. (3) loss on current batches and, for replay
    methods, the replay loss of `replay_kind(method)` (learner.replay_loss_fn, a replay.ReplayLoss whose
    teacher the caller sets at each task boundary).

    lr        (outer) Adam learning rate, Tables 3-4: 2e-4
    beta      replay weight, Tables 3-4 (replay ratio 1.0, weight 1); used by the replay methods only
    lam       Fisher penalty weight lambda of Eq. (8); used by ewc and tr only
    inner_lr  ftml / vrmcl inner SGD step alpha, Tables 3-4: 1e-4
    vr_momentum   vrmcl's STORM ratio r (meta_baselines.py: 0.15)
    second_order  ftml / vrmcl: differentiate through the inner step (paper Eq. 10); Section 4: first order
    grad_clip clip the (outer) gradient norm; 0 or None: off
    bf16      forward passes under bf16 autocast (trust_region.forward_precision); float32 by default
    ema       decay of a WeightAverage around the learner (ours); 0: none
    """
    _check(method)
    loss_fn = diffusion.DenoisingLoss(sched)
    kind = replay_kind(method)
    replay_loss = replay.ReplayLoss(kind, sched) if kind else None
    grad_clip = grad_clip or None  # 0 and None both mean "no clipping"
    if method in ("ftml", "vrmcl"):
        kwargs = dict(lr=lr, inner_lr=inner_lr, beta=beta, second_order=second_order, grad_clip=grad_clip, bf16=bf16)
        if method == "ftml":
            learner = meta_baselines.FTMLLearner(model, loss_fn, replay_loss, **kwargs)
        else:
            learner = meta_baselines.VRMCLLearner(model, loss_fn, replay_loss, r=vr_momentum, **kwargs)
    else:
        learner = trust_region.TrustRegionLearner(model, loss_fn, replay_loss, beta=beta if replay_loss else 0.0,
                                                  lam=lam if uses_fisher(method) else 0.0, lr=lr,
                                                  grad_clip=grad_clip, bf16=bf16)
    return WeightAverage(learner, fisher.params_list(model), ema) if ema else learner


class WeightAverage:
    """A learner whose weights are also averaged: after each step n = 1, 2, ... of the wrapped learner
        avg <- d_n avg + (1 - d_n) theta,   d_n = min(decay, (1 + n) / (10 + n))
    (an exponential moving average with diffusers' EMAModel warm-up, so early averages are not the initial
    weights). Not in the paper (`--ema`, off by default). The loops evaluate the average (`applied`) and keep it at
    each task's end (`adopt`): the Fisher, the anchor theta* and the teacher are then taken at the averaged weights.
    Everything else (step, opt, add_fisher, replay_loss_fn) is the wrapped learner's."""

    def __init__(self, learner, params, decay):
        self.learner, self.params, self.decay, self.n = learner, params, decay, 0
        self.avg = [p.detach().clone() for p in params]

    def __getattr__(self, name):
        return getattr(self.learner, name)

    def step(self, *args, **kwargs):
        logs = self.learner.step(*args, **kwargs)
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1 - d)  # avg + (1 - d) (theta - avg)
        return logs

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block and its trained weights again after it."""
        trained = [p.detach().clone() for p in self.params]
        self.adopt()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, trained)

    def adopt(self):
        """The model takes the averaged weights for good."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.avg)

    def state_dict(self):
        return {"learner": self.learner.state_dict(), "avg": self.avg, "n": self.n}

    def load_state_dict(self, sd):
        self.learner.load_state_dict(sd["learner"])
        with torch.no_grad():
            torch._foreach_copy_(self.avg, [a.to(p.device) for a, p in zip(sd["avg"], self.avg)])
        self.n = sd["n"]
