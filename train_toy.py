"""The paper's whole continual protocol (Sections 3-4: Tables 1-2, Figure 2) on class-conditional 2-D point clouds,
in about a minute and a half on two CPU cores: for coursework and for checking the paper's claims at toy scale.

    python train_toy.py                                   # all six methods x 3 seeds, then Tables 1-2, Figure 2
    python train_toy.py --method tr --seeds 1             # one method, one seed (seconds)
    python train_toy.py --method ewc,tr --fisher diag     # classic diagonal EWC instead of the rank-1 Fisher
    python train_toy.py --preset smoke                    # seconds; what the tests run
Rerun the same command to resume: finished runs are kept, a stopped run continues after its last finished task.

Nothing of the method lives here: diffusion.py (Eq. 1-3, DDIM), fisher.py (rank-1 Fisher, Section 3.2),
learners.make_learner (the six learners; Eq. 8-9 in trust_region.py), replay.py (pool, distillation),
metrics.py (Tables 1-2, Figure 2), fid.py (the Frechet distance). This file adds the data, an MLP denoiser (the
toy's stand-in for unet.py) and the wiring, in the order of train_imagenet.py and train_cw10.py.

Data: num_tasks tasks of classes_per_task classes on a canvas [-100, 100]^2 (the model sees x / 100 in [-1, 1], as
images are scaled to [-1, 1]). Task k sits around its own centre (the four corners, then the middle); its classes
are a ring, a Gaussian blob and a two-armed spiral, 25 units from that centre. A class the model forgets is
generated somewhere else, which moves its mean: the Frechet distance sees forgetting directly.
Score (lower is better, as FID):
    R[i][j] = mean over task j's classes c of FD(DDIM samples of class c, held-out points of class c)
    FD = fid.frechet_distance of the points' mean and covariance, on the raw canvas coordinates (FID without
    Inception). FD sees two moments only (a ring and a blob of equal spread score alike), so every score is
    also computed as the sliced Wasserstein distance SW_2^2 (`sliced_wasserstein`), tables in sw/.
    Task-1 curve at metrics.eval_schedule's steps of every task (Figure 2), Table 2 with taus 10/20/30 %.
Output (--out, default runs/toy-<preset>): one run folder <method>-s<seed>/ per run (config.json, metrics.jsonl,
summary.json, checkpoint.pt, samples.npz), then table1.md, table2.md, figure2_toy.png (metrics.aggregate),
samples.png (every method's samples of every task after the last task, first seed) and sw/ (the same with SW).

Deviations from the paper (results/toy/README.md says why each toy setting was chosen)
- paper: ImageNet-32, 10 tasks x 50 classes, a 38.6M-parameter UNet; here: 5 tasks x 3 classes of 2-D points, a
  3-layer MLP (14,242 parameters) with the UNet's conditioning (step sinusoid + class embedding).
- paper: FID of Inception features; here: the same Frechet formula on the raw 2-D coordinates, 100 points a class.
- paper: Adam lr 2e-4, 100 epochs per task (Table 3); here: lr 3e-3, 150 steps of batch 128 per task, so that all
  18 runs fit in two minutes on two cores.
- paper: DDIM 50 steps (Appendix C.1.1); here: 10, for the scores and the replay pools (time; on task 1, 10 and 20
  steps give the same quality, 50 a worse one from an MLP trained for 150 steps).
- paper: Fisher over 10,000 samples per task; here: all of a task's 3,000 training points.
- The Task-1 curve and R use one evaluation protocol (sample count, fixed sampler noise per task), so the curve's
  value at the end of a task equals that row's R entry, and Table 2's FD_1^(0) is R[0][0].
- Checkpoints only at task ends (a task takes about a second).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch._dynamo  # noqa: F401  torch.optim imports it at the first optimizer (3 s); here once, before workers fork
from torch import nn
from tqdm.auto import tqdm

import diffusion
import experiment
import fid
import fisher
import learners
import metrics
import replay
import runfiles
import unet

# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    method: str = "all"  # finetune | ewc | replay | tr | ftml | vrmcl, a comma list of them, or all (Table 1 rows)
    seed: int = 0  # the first training seed (model init, batches, noise)
    seeds: int = 3  # runs seeds seed .. seed+seeds-1 of each method (Table 3: 3 seeds averaged)
    num_tasks: int = 5  # tasks, one region of the canvas each (at most 5)
    classes_per_task: int = 3  # classes per task: ring, blob, spiral, ring, ... (at most 4)
    train_per_class: int = 1_000  # training points per class
    eval_per_class: int = 100  # generated and held-out points per class behind every score (R and the curve)
    hidden: int = 64  # MLP width (the toy's stand-in for the UNet)
    batch_size: int = 128  # training batch (bilevel: 64 support + 64 query, Section 4.1)
    lr: float = 3e-3  # Adam (outer lr for ftml/vrmcl); Table 3: 2e-4
    steps_per_task: int = 150  # gradient updates per task; Table 3: 100 epochs
    grad_clip: float = 0.0  # clip the update's gradient norm, 0 = off
    reset_optimizer: bool = False  # clear Adam's moments at each boundary (experiment.transition); carried here:
    #   with the reset the order of the methods is the same (results/toy/README.md); the committed results carry them
    fisher: str = "rank1"  # rank1 (Wang et al. 2026, the paper) | diag (classic EWC, for comparison)
    fisher_samples: int = 10_000  # Table 3: Fisher samples per task (capped at the task's training points)
    fisher_batch: int = 500  # batch of the Fisher passes (memory only, same estimate)
    lam: float = 15_000.0  # Table 3: EWC lambda (ewc, tr)
    beta: float = 1.0  # Eq. (7)-(8) replay weight (authors' gr.py: 1)
    replay_per_task: int = 1_300  # Table 3: replay buffer 1,300 per task
    replay_ratio: float = 1.0  # Table 3: replay batch = replay_ratio x batch_size
    replay_ddim_steps: int = 10  # DDIM steps of the replay pool (authors' gr.py: 50)
    replay_rebuild: bool = True  # regenerate every old task's pool at each boundary (authors' gr.py)
    inner_lr: float = 1e-4  # Table 3: inner SGD lr (ftml, vrmcl)
    vr_momentum: float = 0.15  # VR-MCL r (official run commands)
    second_order: bool = False  # ftml/vrmcl: second-order meta-gradient (Section 4: first order)
    ema: float = 0.0  # decay of a weight average that is evaluated and kept at each task's end (ours; 0 = off)
    bf16: bool = False  # forward passes under bf16 autocast (ours: the paper states no precision)
    prediction: str = "epsilon"  # the denoiser predicts: epsilon (Eq. 3, the paper) | sample (x0; ours, diffusion.py)
    ddim_steps: int = 10  # DDIM steps of every score (Appendix C.1.1: 50)
    curve: str = "dense"  # Task-1 curve: dense (metrics.eval_schedule) | end | off | in-task steps "100,200"
    data_seed: int = 0  # the point clouds' seed (fixed across training seeds)
    log_every: int = 50  # steps between train records in metrics.jsonl
    device: str = "cpu"  # auto | cpu | cuda[:i] (a GPU is slower than a CPU core for this MLP)
    threads: int = 1  # torch CPU threads per run (tiny ops: one thread is fastest)
    workers: int = 0  # runs trained at once, one process each (0 = one per CPU core)
    progress: bool = True  # tqdm bars and per-task lines (off when several runs share the terminal)


RUNTIME_FIELDS = ("device", "threads", "workers", "progress")
PRESETS = {
    "paper": {},  # the toy: the paper's protocol and Table 3 values, toy-sized data, model, lr and steps
    "smoke": dict(seeds=1, num_tasks=2, classes_per_task=2, train_per_class=64, eval_per_class=32, hidden=32,
                  batch_size=16, steps_per_task=12, fisher_samples=32, fisher_batch=16, replay_per_task=16,
                  replay_ddim_steps=4, ddim_steps=4, log_every=4, progress=False),
}
CHOICES = {"fisher": fisher.FISHER_KINDS, "prediction": diffusion.PREDICTIONS}
# random streams (the last key of experiment.generator)
STREAM_TRAIN, STREAM_NOISE, STREAM_EVAL, STREAM_FISHER, STREAM_POOL = range(5)
LONGEST_FIRST = ("vrmcl", "ftml", "tr", "replay", "ewc", "finetune")  # queue order: the slowest runs start first


def method_list(cfg: Config) -> list[str]:
    names = list(learners.METHODS) if cfg.method == "all" else [m.strip() for m in cfg.method.split(",")]
    for m in names:
        runfiles.require(m in learners.METHODS, f"--method {m!r}: choose from "
                                                        f"{', '.join(learners.METHODS)}, a comma list, or all")
    runfiles.require(len(set(names)) == len(names), f"--method names a method twice: {cfg.method!r}")
    return names


def validate(cfg: Config) -> None:
    """ValueError (one line) for any configuration that cannot run; nothing is written before this passes."""
    experiment.validate_common(cfg, positive=(
        "seeds", "num_tasks", "classes_per_task", "train_per_class", "eval_per_class", "hidden", "batch_size", "lr",
        "steps_per_task", "fisher_samples", "fisher_batch", "replay_per_task", "replay_ddim_steps", "ddim_steps",
        "log_every"), non_negative=("grad_clip", "lam", "beta", "replay_ratio", "inner_lr", "vr_momentum", "threads",
                                    "workers"))
    methods = method_list(cfg)
    runfiles.require(cfg.num_tasks <= len(CENTRES), f"--num-tasks must be <= {len(CENTRES)}")
    runfiles.require(cfg.classes_per_task <= 4, "--classes-per-task must be <= 4 (classes would overlap)")
    runfiles.require(cfg.eval_per_class >= 2, "--eval-per-class must be >= 2 (a covariance needs two points)")
    n_replay = round(cfg.replay_ratio * cfg.batch_size)
    for m in methods:
        runfiles.require(m not in ("ftml", "vrmcl") or (cfg.batch_size % 2 == 0 and n_replay % 2 == 0),
                         f"{m} splits each batch into support and query halves: --batch-size ({cfg.batch_size}) "
                         f"and the replay batch ({n_replay}) must be even")
        runfiles.require(not learners.uses_replay(m) or n_replay >= 1, "--replay-ratio gives no replay")
    runfiles.require(cfg.ddim_steps <= 1000 and cfg.replay_ddim_steps <= 1000, "DDIM steps must be <= 1000")
    metrics.curve_points(cfg.curve, cfg.steps_per_task)

# ----------------------------------------------------------------------------------------------------------------
# data: class-conditional point clouds on the canvas [-100, 100]^2

SCALE = 100.0  # canvas units per model unit: the model sees x / SCALE in [-1, 1] (DDIM clips x0_hat there)
CENTRES = ((-55.0, 55.0), (55.0, 55.0), (-55.0, -55.0), (55.0, -55.0), (0.0, 0.0))  # task k's centre
SHAPES = ("ring", "blob", "spiral")  # class j of a task has shape SHAPES[j % 3]


def class_points(c: int, n: int, classes_per_task: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, 2) of class c in canvas units: task k = c // C around CENTRES[k], class j = c % C at 25 units
    from it (angle 90 + 360 j / C degrees). ring: radius 10 +- 1; blob: N(0, 5^2 I); spiral: two arms, radius
    2 -> 12 over 1.5 turns, +- 0.8."""
    k, j = divmod(c, classes_per_task)
    a = math.pi / 2 + 2 * math.pi * j / classes_per_task
    centre = torch.tensor(CENTRES[k]) + 25.0 * torch.tensor([math.cos(a), math.sin(a)])  # (2,)
    u, z = torch.rand(n, generator=generator), torch.randn(n, 2, generator=generator)    # (n,), (n, 2)
    shape = SHAPES[j % len(SHAPES)]
    if shape == "ring":
        r, phi, jitter = 10.0, 2 * math.pi * u, 1.0
    elif shape == "blob":
        return centre + 5.0 * z
    else:  # spiral: arm = u < 0.5, position along the arm s in [0, 1)
        s = (2 * u) % 1.0
        r, phi, jitter = 2.0 + 10.0 * s, 3 * math.pi * s + math.pi * (u >= 0.5), 0.8
    return centre + torch.stack([r * torch.cos(phi), r * torch.sin(phi)], 1) + jitter * z  # (n, 2)


@dataclass
class PointSet:
    """x (N, 2) canvas units, y (N,) class ids 0..C-1, class-sorted."""
    x: torch.Tensor
    y: torch.Tensor

    def task_rows(self, task: int, classes_per_task: int) -> torch.Tensor:
        return torch.nonzero(self.y // classes_per_task == task).squeeze(1)  # (n_task,)


def make_points(cfg: Config, per_class: int, split: int) -> PointSet:
    """per_class points of each class; split 0 = train, 1 = held-out (disjoint random streams)."""
    n_classes = cfg.num_tasks * cfg.classes_per_task
    x = torch.cat([class_points(c, per_class, cfg.classes_per_task, experiment.generator(cfg.data_seed, c, split))
                   for c in range(n_classes)])                                          # (n_classes * per_class, 2)
    return PointSet(x, torch.arange(n_classes).repeat_interleave(per_class))

# ----------------------------------------------------------------------------------------------------------------
# model: the epsilon-network


class ToyDenoiser(nn.Module):
    """eps_theta(x_t, t, y) for 2-D points, the toy's stand-in for unet.py's UNet, conditioned as the UNet is (the
    diffusers step sinusoid and a class embedding):

        eps_hat = x_t + MLP([sin(w_k x_t), cos(w_k x_t), clamp(x_t, -2, 2), sinusoid(t), embed(y)])   (B, 2)
        w_k = 2^k pi / 2, k < 4 (Fourier features: a small MLP learns the classes' fine shapes from them)

    The identity path x_t is the optimal eps at high noise, so the MLP learns only the correction. Its inputs are
    bounded, so its output stays bounded far from the data: with a plain MLP on x_t, trained for a few hundred
    steps, DDIM (which keeps the network's unclipped eps_hat) amplifies a small over-prediction of eps for x_T
    in the Gaussian's tails step after step, into points at the canvas edge (results/toy/README.md).
    """

    def __init__(self, num_classes: int, hidden: int = 64, emb: int = 32, fourier: int = 4):
        super().__init__()
        self.register_buffer("w", torch.exp2(torch.arange(fourier, dtype=torch.float32)) * math.pi / 2)  # (K,)
        self.register_buffer("t_emb", unet.sinusoidal_embedding(torch.arange(1000), emb, flip_sin_to_cos=True,
                                                                 freq_shift=0))  # (T, emb), looked up by t
        self.label = nn.Embedding(num_classes, emb)
        self.net = nn.Sequential(nn.Linear(4 * fourier + 2 + 2 * emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_t (B, 2), t (B,) long in 0..999, y (B,) long -> eps_hat (B, 2)."""
        a = (x_t[:, :, None] * self.w).flatten(1)                                         # (B, 2K)
        h = torch.cat([a.sin(), a.cos(), x_t.clamp(-2, 2), self.t_emb[t], self.label(y)], dim=1)  # (B, 4K+2+2emb)
        return x_t + self.net(h)                                                           # (B, 2)

# ----------------------------------------------------------------------------------------------------------------
# evaluation: FD and sliced Wasserstein per class


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_angles: int = 64) -> float:
    """SW_2^2 between equal-size point sets a, b (n, 2): the mean over n_angles directions evenly spaced in
    [0, pi) of the 1-D squared W_2 of the projections (sorted-sample coupling). Zero iff the sets agree in every
    projected direction, so it tells a ring from a blob, which FD's two moments cannot."""
    angle = torch.arange(n_angles, dtype=torch.float64) * math.pi / n_angles
    d = torch.stack([angle.cos(), angle.sin()], 1)                                  # (L, 2)
    pa, pb = (a.double() @ d.T).sort(0).values, (b.double() @ d.T).sort(0).values    # (n, L) each
    return float((pa - pb).pow(2).mean())


class Evaluator:
    """Scores of one task's DDIM samples against its held-out points: (FD, SW) averaged over the task's classes."""

    def __init__(self, cfg: Config, heldout: PointSet, sched, device):
        self.cfg, self.heldout, self.sched, self.device = cfg, heldout, sched, device
        self.labels, self.refs = replay.label_source(cfg.classes_per_task), {}

    def ref(self, c: int):
        """(mu, sigma, points (n, 2)) of class c's held-out points, cached."""
        if c not in self.refs:
            pts = self.heldout.x[self.heldout.y == c]
            self.refs[c] = (*fid.statistics(pts.numpy()), pts)
        return self.refs[c]

    @torch.no_grad()
    def score(self, model, task: int, generator: torch.Generator):
        """(FD, SW, samples (n, 2) canvas units, labels (n,)) of n = eval_per_class x C class-balanced samples."""
        y = self.labels(task, self.cfg.eval_per_class * self.cfg.classes_per_task)     # (n,)
        model.eval()
        x = diffusion.ddim_sample(model, self.sched, (len(y), 2), y.to(self.device), steps=self.cfg.ddim_steps,
                                  generator=generator, device=self.device).cpu() * SCALE  # (n, 2)
        model.train()
        fd, sw = [], []
        for c in y.unique().tolist():
            mu, sigma, pts = self.ref(c)
            fd.append(fid.frechet_distance(*fid.statistics(x[y == c].numpy()), mu, sigma))
            sw.append(sliced_wasserstein(x[y == c], pts))
        return float(np.mean(fd)), float(np.mean(sw)), x, y

# ----------------------------------------------------------------------------------------------------------------
# the continual run


def task_names(cfg: Config) -> list[str]:
    c = cfg.classes_per_task
    return [f"T{k + 1} (classes {k * c}-{(k + 1) * c - 1})" for k in range(cfg.num_tasks)]


def train(cfg: Config, folder: experiment.RunFolder, data: tuple[PointSet, PointSet], device) -> dict:
    """The continual loop over cfg's tasks in `folder` (resumed from its checkpoint if it has one)."""
    train_set, heldout = data
    task_rows = [train_set.task_rows(k, cfg.classes_per_task) for k in range(cfg.num_tasks)]
    sched, steps = diffusion.Schedule(prediction=cfg.prediction), cfg.steps_per_task
    torch.manual_seed(cfg.seed)  # parameter init (the only use of the global RNG)
    model = ToyDenoiser(cfg.num_tasks * cfg.classes_per_task, cfg.hidden).to(device)
    state = {"task": 0, "step": 0, "global_step": 0, "R": [], "R_sw": [], "curve": [], "curve_sw": [],
             "transitions": []}
    learner, pool, teacher, state = experiment.start(folder, cfg, model, sched, state)
    log, evaluator = folder.logger.log, Evaluator(cfg, heldout, sched, device)

    def save():
        experiment.check_parameters(model, f"task {state['task'] + 1} step {state['step']}")
        folder.save(experiment.checkpoint(cfg, state, model, learner, pool, teacher))

    def to_batch(rows: torch.Tensor):  # (x0 (B, 2) in model units, labels (B,)) on the device
        return (train_set.x[rows] / SCALE).to(device), train_set.y[rows].to(device)

    def evaluate(j: int) -> tuple:
        """Scores of task j; the sampler noise depends only on j: common random numbers for R and the curve."""
        experiment.check_parameters(model, f"task {state['task'] + 1} step {state['step']}")
        with folder.clock.timed("eval_s"):
            return evaluator.score(model, j, experiment.generator(cfg.seed, j, STREAM_EVAL, device=device))

    start = time.perf_counter()
    while state["task"] < cfg.num_tasks:
        k = state["task"]
        rows, curve_at = task_rows[k], set(metrics.curve_points(cfg.curve, steps))
        bar = tqdm(range(state["step"], steps), desc=f"{cfg.method} s{cfg.seed} task {k + 1}/{cfg.num_tasks}",
                   leave=False,
                   disable=not cfg.progress)
        for s in bar:
            g = experiment.generator(cfg.seed, k, s, STREAM_TRAIN)
            batch = to_batch(rows[torch.randint(len(rows), (cfg.batch_size,), generator=g)])
            replay_batch = pool.sample(round(cfg.replay_ratio * cfg.batch_size), g, device) if len(pool) else None
            noise = experiment.generator(cfg.seed, k, s, STREAM_NOISE, device=device)
            experiment.train_step(learner, batch, replay_batch, noise, state, folder, bar, cfg.log_every)
            if s + 1 in curve_at:  # Figure 2: Task 1 at metrics.eval_schedule's in-task steps
                fd, sw, _, _ = evaluate(0)
                state["curve"].append((state["global_step"], s + 1, k, fd))
                state["curve_sw"].append((state["global_step"], s + 1, k, sw))
                log({"kind": "curve", "global_step": state["global_step"], "task": k, "in_task_step": s + 1,
                     "eval_task": 0, "fd": fd, "sw": sw})
            experiment.step_end(False, save)  # checkpoints at task ends, and at a stop (Ctrl-C, SIGTERM)
        bar.close()
        # task boundary, the same steps in every experiment: (1) evaluate every seen task (row k of R),
        # (2) Fisher of task k, (3) teacher and replay pool; nothing is estimated after the last task
        row, row_sw, samples = [], [], []
        for j in range(k + 1):
            fd, sw, x, y = evaluate(j)
            row.append(fd)
            row_sw.append(sw)
            samples.append((x, y))
        experiment.check_finite(f"task {k + 1} scores", dict(enumerate(row + row_sw)))
        pad = [None] * (cfg.num_tasks - k - 1)
        state["R"].append(row + pad)
        state["R_sw"].append(row_sw + pad)
        log({"kind": "eval", "global_step": state["global_step"], "task": k, "fd": row, "sw": row_sw})
        if cfg.progress:
            print(f"{cfg.method} s{cfg.seed} after task {k + 1}: FD " + " ".join(f"{v:.1f}" for v in row)
                  + " | SW " + " ".join(f"{v:.1f}" for v in row_sw), flush=True)
        if k + 1 < cfg.num_tasks:
            if learners.uses_fisher(cfg.method):
                F = fisher.estimate_on_task(
                    model, sched, lambda idx: to_batch(rows[idx]), len(rows), cfg.fisher_samples, cfg.fisher_batch,
                    experiment.generator(cfg.seed, k, STREAM_FISHER),
                    experiment.generator(cfg.seed, k, STREAM_FISHER, 1, device=device), cfg.fisher, cfg.progress)
                experiment.add_fisher(learner, F, log, k, state["global_step"])
            if learners.uses_replay(cfg.method):
                teacher = replay.frozen_copy(model)
                learner.replay_loss_fn.set_teacher(teacher)
                kwargs = dict(batch_size=cfg.replay_per_task, steps=cfg.replay_ddim_steps, progress=False,
                              generator=experiment.generator(cfg.seed, k, STREAM_POOL, device=device), device=device)
                if cfg.replay_rebuild:
                    pool.rebuild(teacher, sched, range(k + 1), replay.label_source(cfg.classes_per_task),
                                 cfg.replay_per_task, (2,), **kwargs)
                else:
                    pool.build(teacher, sched, k, replay.label_source(cfg.classes_per_task), cfg.replay_per_task,
                               (2,), **kwargs)
                log({"kind": "replay", "global_step": state["global_step"], "task": k, "pool_size": len(pool)})
            experiment.transition(learner, cfg, state)  # clears Adam's moments only with --reset-optimizer
        else:  # the picture of every task's samples after the last task
            x, y = torch.cat([x for x, _ in samples]).numpy(), torch.cat([y for _, y in samples]).numpy()
            runfiles.atomic_write(folder.path("samples.npz"), "wb", lambda f: np.savez(f, x=x, y=y))
        state["task"], state["step"], folder.task, folder.step = k + 1, 0, k + 1, 0
        save()
    summary = write_summary(cfg, folder, state)
    return {"method": cfg.method, "seed": cfg.seed, "average": summary["average"], "forgetting": summary["forgetting"],
            "seconds": time.perf_counter() - start}


def write_summary(cfg: Config, folder, state: dict) -> dict:
    """summary.json (FD) in the run folder and sw/summary.json (sliced Wasserstein), through metrics.py."""
    summaries, made = {}, experiment.provenance(folder)
    for sub, key, name in (("", "", "FD"), ("sw", "_sw", "SW_2^2")):
        summaries[sub] = summary = metrics.build_summary(
            cfg.method, cfg.seed, "toy", task_names(cfg), state["R" + key], False, state["curve" + key],
            state["transitions"], metrics.FID_THRESHOLDS, provenance=made,
            extra={"score": name, "eval_per_class": cfg.eval_per_class, "ddim_steps": cfg.ddim_steps,
                   "fisher": cfg.fisher, "lam": cfg.lam})
        # no per-run Figure 2: 36 matplotlib figures would double the run time (the aggregate draws Figure 2)
        metrics.write_run_outputs(os.path.join(folder.out, sub), summary, figure=False)
    return summaries[""]

# ----------------------------------------------------------------------------------------------------------------
# entry point: every run in its own folder (in parallel processes), then the tables and figures


def run_dir(out: str, cfg: Config) -> str:
    return os.path.join(out, f"{cfg.method}-s{cfg.seed}")


def run_one(cfg: Config, out: str) -> dict:
    """Train one method and seed in run_dir(out, cfg); resumes a stopped run, redoes nothing of a finished one."""
    device = experiment.setup_torch(cfg.device, cfg.threads)
    data = make_points(cfg, cfg.train_per_class, 0), make_points(cfg, cfg.eval_per_class, 1)
    with experiment.track(experiment.RunFolder(run_dir(out, cfg), cfg, RUNTIME_FIELDS)) as folder:
        return train(cfg, folder, data, device)


def plot_samples(out: str, runs: list[Config], cfg: Config) -> str:
    """samples.png: one row per method (its first seed), one column per task; the task's generated points coloured
    by class over every task's held-out points in grey, on the whole canvas (a forgotten class lands elsewhere)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts = {r.method: r for r in runs if r.seed == cfg.seed}
    methods = [m for m in metrics.METHOD_ORDER if m in firsts]
    heldout, cpt = make_points(cfg, cfg.eval_per_class, 1), cfg.classes_per_task
    fig, axes = plt.subplots(len(methods), cfg.num_tasks, squeeze=False,
                             figsize=(max(1.8 * cfg.num_tasks, 4.0), 1.8 * len(methods) + 0.5))
    for i, m in enumerate(methods):
        samples = np.load(os.path.join(run_dir(out, firsts[m]), "samples.npz"))
        for k in range(cfg.num_tasks):
            ax = axes[i][k]
            ax.scatter(heldout.x[:, 0], heldout.x[:, 1], s=0.5, color="0.85", rasterized=True)
            for c in range(k * cpt, (k + 1) * cpt):
                pts = samples["x"][samples["y"] == c]
                ax.scatter(pts[:, 0], pts[:, 1], s=0.8, color=f"C{c % cpt}", rasterized=True)
            ax.set(xlim=(-100, 100), ylim=(-100, 100), xticks=[], yticks=[], aspect="equal")
            if i == 0:
                ax.set_title(f"task {k + 1}", fontsize=9)
            if k == 0:
                ax.set_ylabel(metrics.DISPLAY_NAMES[m], fontsize=9)
    fig.suptitle(f"samples of every task after task {cfg.num_tasks} (seed {cfg.seed})", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "samples.png")
    runfiles.atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


def main(argv=None) -> None:
    cfg, args = experiment.parse_config(Config, PRESETS, argv, __doc__.split("\n\n")[0], CHOICES)
    validate(cfg)
    out = args.out or os.path.join("runs", f"toy-{args.preset}")
    runfiles.check_writable(out, "the output folder")
    runs = [replace(cfg, method=m, seed=cfg.seed + i, seeds=1) for m in method_list(cfg) for i in range(cfg.seeds)]
    workers = min(len(runs), cfg.workers or os.cpu_count() or 1)
    start = time.perf_counter()
    if workers == 1:
        results = [run_one(r, out) for r in runs]
    else:  # one process per run at a time, no bars; the slowest methods first
        queue = sorted(runs, key=lambda r: LONGEST_FIRST.index(r.method))
        start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: no re-imports
        with runfiles.worker_pool(workers, start_method) as pool:
            jobs = [pool.submit(run_one, replace(r, progress=False), out) for r in queue]
            results = list(runfiles.pool_results((job.result() for job in jobs), "training a toy run"))
    for r in sorted(results, key=lambda r: (metrics.METHOD_ORDER.index(r["method"]), r["seed"])):
        forgetting = "n/a" if r["forgetting"] is None else f"{r['forgetting']:.1f}"
        print(f"{r['method']:>8} seed {r['seed']}: average FD {r['average']:.1f}, forgetting {forgetting} "
              f"({r['seconds']:.1f} s)")
    dirs = [run_dir(out, r) for r in runs]
    written = metrics.aggregate(dirs, out)
    written += metrics.aggregate([os.path.join(d, "sw") for d in dirs], os.path.join(out, "sw"))
    written.append(plot_samples(out, runs, cfg))
    with open(os.path.join(out, "table1.md"), encoding="utf-8") as f:
        print(f.read())
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s with {workers} worker(s); wrote "
          + ", ".join(written))


if __name__ == "__main__":
    experiment.run(main)
