"""Generative replay for diffusion models (paper Section 3.2, Eq. 7; Section 4 "Baselines"; Tables 3-4).

The same code serves class-conditional images and diffusion policies: a sample is (x0, cond), with
x0 an image (C, H, W) and cond its class label, or x0 an action sequence (S, D_a) and cond the
observation window (O, D_o) it was generated for.

At each task boundary the model is frozen into a *teacher* (a deep copy, eval mode, no gradients). The
teacher generates a pool for every old task with DDIM (50 steps, eta = 0; Appendix C.1.1 / C.2.1):
  - images: `label_source(classes_per_task)` gives balanced class labels, 1,300 samples per task (Table 3);
  - policies: the caller passes a `cond_source` that returns observation windows (for CW10: rollouts of the
    frozen policy in the old task's environment, 2,500 per task, Table 4), or adds finished
    (action sequence, observation window) pairs with `ReplayPool.add`.
The pool is built once per boundary, batched, with a progress bar. During the next task nothing is
regenerated: a replay batch is drawn from the stored samples, evenly over old tasks, and is as large as
the current batch (replay ratio 1.0, Tables 3-4).

Two replay losses, both per-sample vectors (B,):
  distillation (Masip et al. 2025; the authors' variant, Teachable-AI-Lab/diffusion-continual-learning `src/gr.py`):
      t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps      (Eq. 2)
      l_i = mean_over_dims (eps_theta(x_t, t, c) - eps_teacher(x_t, t, c))^2
  plain generative replay: the same with the true eps as target, i.e. the ordinary loss (Eq. 3) on x0_hat.
With --prediction sample (diffusion.py) the networks output x0_hat instead of eps_hat: distillation compares the
student's and the teacher's x0_hat, and plain replay is the x0 loss with the generated x0 as target.
The paper's "Replay" row is generative *distillation*: Section 4 says "Generative replay, implemented via
generative distillation, which has been shown effective for diffusion models (Masip et al., 2025)".
The teacher's eps at (x_t, t) is a lower-variance target than the eps that was drawn, because it is the
teacher's estimate of E[eps | x_t] rather than one noisy draw.

Notation: T = 1000 training steps, K = number of old tasks, B = batch size, theta = student parameters.

Deviations from the paper:
  - paper (and the authors' `gr.py`): one pool per old *class*; here: one pool per old *task*, with the
    class labels inside it balanced (1,300 / 50 = 26 per class on ImageNet-500). Same samples, simpler index.
  - Masip et al. weight the real and distillation losses by 1/(k+1) and k/(k+1) (Atenrev/diffusion_continual_learning,
    `FullGenerationDistillationDiffusionTraining`); the authors' variant (used here, `src/gr.py`) adds the replay
    loss with weight beta = 1 and no task-count weighting.
  - The remainder rule for batches not divisible by K is ours (see `ReplayPool.sample`).
"""
import copy

import torch
from tqdm import tqdm

import diffusion

# --------------------------------------------------------------------------------------------------
# Teacher


def frozen_copy(model):
    """A frozen deep copy of `model`: the teacher at a task boundary (eval mode, requires_grad False)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


# --------------------------------------------------------------------------------------------------
# Replay losses: fn(model, batch, generator=None) -> (B,)


def distillation_target(teacher, sched, batch, generator=None):
    """Generative distillation as a regression: (x_t, t, cond, the teacher's output on them). The teacher sees the
    noised replay sample x_t of DenoisingLoss.regression (the same t and eps draw the student will see), under
    no_grad."""
    x_t, t, cond, _ = diffusion.DenoisingLoss(sched).regression(batch, generator)  # Eq. (2); the data target unused
    with torch.no_grad():
        target = teacher(x_t, t, cond)  # (B, ...), in the run's prediction form
    return x_t, t, cond, target


def distillation_loss(student, teacher, sched, batch, generator=None):
    """Generative distillation (Masip et al. 2025): per-sample MSE between student and teacher outputs. (B,)

    Both networks see the same noised replay sample x_t, the same t and the same eps draw. The teacher
    runs under no_grad, so the gradient flows through the student only.
    """
    x_t, t, cond, target = distillation_target(teacher, sched, batch, generator)
    return diffusion.DenoisingLoss.error(student(x_t, t, cond), target)  # (B,)


def generative_replay_loss(model, sched, batch, generator=None):
    """Plain generative replay: the ordinary eps-prediction loss (Eq. 3) on generated samples. (B,)"""
    return diffusion.DenoisingLoss(sched)(model, batch, generator)


REPLAY_KINDS = ("distill", "generative")


class ReplayLoss:
    """The replay_loss_fn of a learner (learners.make_learner builds it): `loss(model, batch, generator=None)
    -> (B,)`, and `loss.regression(batch, generator)` -> (x_t, t, cond, target) as diffusion.DenoisingLoss's. Kind
    "distill" needs the teacher at step time: the training script sets it at each task boundary with `set_teacher`
    (and checkpoints `teacher`); kind "generative" ignores it."""

    def __init__(self, kind, sched, teacher=None):
        if kind not in REPLAY_KINDS:
            raise ValueError(f"replay loss kind must be one of {REPLAY_KINDS}, got {kind!r}")
        self.kind, self.sched, self.teacher = kind, sched, teacher

    def set_teacher(self, teacher):
        self.teacher = teacher

    def __call__(self, model, batch, generator=None):
        x_t, t, cond, target = self.regression(batch, generator)  # generative_replay_loss | distillation_loss
        return diffusion.DenoisingLoss.error(model(x_t, t, cond), target)  # (B,)

    def regression(self, batch, generator=None):
        """(x_t, t, cond, target) of a replay batch: the data target (generative) or the teacher's output (distill)."""
        if self.kind == "generative":
            return diffusion.DenoisingLoss(self.sched).regression(batch, generator)
        if self.teacher is None:
            raise ValueError("distillation replay loss called before a teacher was set")
        return distillation_target(self.teacher, self.sched, batch, generator)


# --------------------------------------------------------------------------------------------------
# Conditioning sources: cond_source(task_id, n, generator) -> (n, ...) tensor or None


def label_source(classes_per_task):
    """Balanced class labels for task k: classes k*C .. k*C + C - 1, each n // C or n // C + 1 times.

    Task k of ImageNet-500 is classes 50k .. 50k + 49 (Appendix C.1.2). Deterministic: labels cycle in order.
    """

    def source(task_id, n, generator=None):
        return task_id * classes_per_task + torch.arange(n) % classes_per_task  # (n,)

    return source


# --------------------------------------------------------------------------------------------------
# The pool


class ReplayPool:
    """Generated replay samples per old task: x0[k] (n, ...) and cond[k] (n, ...) or None.

    Memory: the stored samples (on `storage_device`, CPU by default); the teacher is held by ReplayLoss.
    """

    def __init__(self, storage_device="cpu"):
        self.storage_device = torch.device(storage_device)
        self.x0 = {}  # task_id -> (n, ...)
        self.cond = {}  # task_id -> (n, ...) or None

    @property
    def task_ids(self):
        return sorted(self.x0)

    def __len__(self):
        return sum(x.shape[0] for x in self.x0.values())

    def add(self, task_id, x0, cond):
        """Store finished samples for a task (replacing any previous ones), e.g. pairs from policy rollouts."""
        if cond is not None and cond.shape[0] != x0.shape[0]:
            raise ValueError(f"x0 has {x0.shape[0]} samples but cond has {cond.shape[0]}")
        if x0.shape[0] == 0:
            raise ValueError(f"task {task_id}: cannot store an empty pool")
        others = [c is None for k, c in self.cond.items() if k != int(task_id)]
        if others and others[0] != (cond is None):
            raise ValueError(f"task {task_id}: mixing conditional and unconditional samples in one pool")
        self.x0[int(task_id)] = x0.detach().to(self.storage_device)
        self.cond[int(task_id)] = None if cond is None else cond.detach().to(self.storage_device)

    @torch.no_grad()
    def build(self, teacher, sched, task_id, cond_source, n, sample_shape, batch_size=256, steps=50, eta=0.0,
              generator=None, device=None, progress=True):
        """Generate n samples of shape sample_shape for one task with DDIM and store them.

        cond_source(task_id, n, generator) -> (n, ...) conditioning or None (unconditional model).
        DDIM 50 steps, eta 0 (Appendix C.1.1, C.2.1). Samples are generated in chunks of batch_size on
        `device` (default: the teacher's), so `generator` must live there; they are stored on storage_device.
        """
        if n <= 0:
            raise ValueError(f"pool size must be positive, got {n}")
        cond_all = cond_source(task_id, n, generator)
        chunks = []
        for start in tqdm(range(0, n, batch_size), desc=f"replay pool task {task_id}", disable=not progress,
                          leave=False):
            stop = min(start + batch_size, n)
            cond = None if cond_all is None else cond_all[start:stop].to(device)
            x0 = diffusion.ddim_sample(teacher, sched, (stop - start, *sample_shape), cond, steps=steps, eta=eta,
                                       generator=generator, device=device)  # (b, *sample_shape)
            chunks.append(x0.to(self.storage_device))
        self.add(task_id, torch.cat(chunks), cond_all)

    def rebuild(self, teacher, sched, task_ids, cond_source, n, sample_shape, **kwargs):
        """At a task boundary: drop the old pool and regenerate every old task's samples with the new teacher."""
        self.x0, self.cond = {}, {}
        for k in task_ids:
            self.build(teacher, sched, k, cond_source, n, sample_shape, **kwargs)

    def counts(self, batch_size, generator=None):
        """How many samples each old task contributes to a batch of batch_size: (K,) long.

        Each of the K tasks gets batch_size // K; the batch_size % K leftover slots go to distinct tasks
        picked uniformly at random (so every task is drawn equally often in expectation).
        """
        k = len(self.x0)
        counts = torch.full((k,), batch_size // k, dtype=torch.long)
        extra = torch.randperm(k, generator=generator)[: batch_size % k]
        counts[extra] += 1
        return counts

    def sample(self, batch_size, generator=None, device=None):
        """A replay batch (x0, cond) drawn evenly over old tasks, in task blocks (task order), with replacement.

        Replay ratio 1.0 (Tables 3-4): callers pass batch_size = the current batch size.
        generator must live on the CPU (indices are drawn there).
        """
        if not self.x0:
            raise ValueError("replay pool is empty: build it at a task boundary before sampling")
        xs, cs = [], []
        for task_id, count in zip(self.task_ids, self.counts(batch_size, generator).tolist()):
            idx = torch.randint(self.x0[task_id].shape[0], (count,), generator=generator)
            xs.append(self.x0[task_id][idx.to(self.storage_device)])
            if self.cond[task_id] is not None:
                cs.append(self.cond[task_id][idx.to(self.storage_device)])
        x0 = torch.cat(xs).to(device)  # (batch_size, ...)
        cond = torch.cat(cs).to(device) if cs else None
        return x0, cond

    def state_dict(self):
        return {"x0": dict(self.x0), "cond": dict(self.cond)}

    def load_state_dict(self, sd):
        self.x0, self.cond = {}, {}
        for task_id, x0 in sd["x0"].items():
            self.add(task_id, x0, sd["cond"][task_id])
