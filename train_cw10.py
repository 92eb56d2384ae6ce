"""Continual diffusion-policy training on Continual World 10 (CW10): paper Section 4.2, Tables 1, 2, 4, 5, Figure 2,
Appendix C.2.

    python train_cw10.py --method tr                        # the paper's configuration (Table 4); a GPU run
    python train_cw10.py --method tr --preset medium        # CPU, one core, about an hour: all ten CW10 tasks
    python train_cw10.py --method tr --preset small         # CPU, 18 min: CW10's tasks 6-10 (epsilon; a subsequence)
    python train_cw10.py --method tr --preset smoke         # seconds; what the tests run
    python train_cw10.py --tasks hammer --curve 250,500,1000 --steps-per-task 1000   # one task, a learning curve
    python train_cw10.py --grid paper --tasks hammer        # Table 5's (S, O, A) grid, single-task runs
    python train_cw10.py --bench --env-workers 2            # rollouts: serial, batched, worker processes; demos/s
    python train_cw10.py --compare RUN RUN ... --out paths.png   # Task 1's episodes after each task, a row per run
Rerun the same command to resume a run that was stopped (Ctrl-C, SIGTERM, kill -9): it continues from its last
checkpoint and writes the same files an uninterrupted run writes. Training steps/s per method: python bench.py step.

Pipeline (cw10_data.py holds the environment side): Meta-World 3.1.1 MT1 -v3 tasks with a fresh goal and object
position at every reset -> scripted-expert demonstrations, collected in parallel and cached under data/ ->
training windows -> the continual loop below (learner from learners.make_learner), scored by batched
receding-horizon evaluation rollouts. Notation: S, O, A (sequence length, observation horizon, executed chunk),
B batch, k task index, s step within the task (0-based); see cw10_data.py.

Deviations from the paper (the data's own are in cw10_data.py):
- paper: the number of rollouts behind each point of Figure 2 is not given; here --curve-episodes (50).
- paper: replay buffer "2,500 rollouts/task"; here: the frozen policy is rolled out replay_rollouts times in the
  finished task's environment, and re-planning windows of those rollouts (observation window + the action
  sequence the teacher sampled for it) are the replay samples, replay_windows per rollout to bound memory.
- gradient clipping: not stated for CW10; off (grad_clip 0).
- --lr-schedule cosine (the CPU small preset; Table 4's lr is constant) decays the lr from --lr to 0 within each
  task after a --lr-warmup linear warm-up (experiment.lr_at): at 3e-3 it learns handle-press-side and window-close
  to 0.90-0.95 in 500 steps, against 0.65-0.70 at 1e-3 constant (results/cw10_levers).
- --reset-optimizer (on; the paper does not say): Adam's moments are cleared at each task boundary, as in Continual
  World. Carried over, the moments of a converged task make the next task's first hundred steps 3-6.5x the lr
  (experiment.reset_optimizer); finetune's network then collapsed to a constant output and learned 2 of the ten
  tasks (results/cw10_medium_cpu/adam_carried).
- --bf16 (forward passes under bf16 autocast) and --ema (a weight average, evaluated and kept at each task's end;
  learners.WeightAverage) are ours, both off by default; the paper states neither.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import bench
import cw10_data
import cw10_paths
import diffusion
import experiment
import fisher
import learners
import metrics
import replay
import runfiles
import unet

# ----------------------------------------------------------------------------------------------------------------
# configuration

MODELS = {"paper": unet.unet1d_paper, "small": unet.unet1d_small, "compact": unet.unet1d_compact,
          "tiny": unet.unet1d_tiny}


@dataclass
class Config:
    """Every hyperparameter of a run, one --flag each; defaults are the paper's (Table 4 unless tagged)."""
    method: str = "tr"  # finetune | ewc | replay | tr | ftml | vrmcl (Section 4)
    seed: int = 0  # training seed (model init, batches, noise); Table 4 averages 4 seeds
    tasks: str = ",".join(cw10_data.CW10)  # comma-separated task sequence (CW10 order, Continual World)
    model: str = "paper"  # paper (83.3M, App. C.2.1) | small (5.5M) | compact (1.7M) | tiny (unet.py)
    batch_size: int = 256  # Table 4 (bilevel: 128 support + 128 query)
    lr: float = 2e-4  # Table 4, Adam (outer)
    lr_schedule: str = "constant"  # constant (Table 4) | cosine: lr (1 + cos(pi s / S)) / 2 at step s of each task's S
    lr_warmup: int = 0  # cosine only: the lr also rises linearly over each task's first lr_warmup steps
    steps_per_task: int = 50_000  # Table 4, gradient / meta updates per task
    first_task_steps: int = 0  # > 0: Task 1's updates (the one task learned from random weights; ours, not paper)
    reset_optimizer: bool = True  # Adam's moments cleared at each task boundary (Continual World's run_cl.py,
    #   --reset_optimizer_on_task_change, default True; the paper does not say): experiment.reset_optimizer
    fisher: str = "rank1"  # rank1 (Wang et al. 2026, the paper) | diag (classic EWC, for comparison)
    fisher_samples: int = 20_000  # Table 4, Fisher samples per task
    lam: float = 12.0  # Table 4, EWC lambda
    beta: float = 1.0  # replay loss weight (the authors' src/gr.py: 1)
    replay_ratio: float = 1.0  # Table 4, replay batch = ratio x batch
    replay_rollouts: int = 2500  # Table 4, replay buffer per task in rollouts
    replay_windows: int = 20  # replay samples kept per rollout (ours, bounds memory)
    inner_lr: float = 1e-4  # Table 4, SGD inner step of ftml / vrmcl
    vr_momentum: float = 0.15  # VR-MCL r (official run commands, meta_baselines.py; not in the paper)
    second_order: bool = False  # ftml/vrmcl: second-order meta-gradient (Section 4: first order)
    grad_clip: float = 0.0  # max gradient norm, 0 = off (not stated for CW10)
    ema: float = 0.0  # decay of a weight average that is evaluated and kept at each task's end (ours; 0 = off)
    bf16: bool = False  # forward passes under bf16 autocast (ours: the paper states no precision)
    horizon: int = 8  # S, Section 4.2 / Table 5
    obs_horizon: int = 6  # O, Section 4.2 / Table 5
    action_chunk: int = 2  # A, Section 4.2 / Table 5
    train_timesteps: int = 1000  # App. C.2.1, diffusion steps T
    prediction: str = "epsilon"  # the denoiser predicts: epsilon (Eq. 3, the paper) | sample (x0; ours, diffusion.py)
    ddim_steps: int = 50  # App. C.2.1, DDIM steps at inference
    demos_per_task: int = 2500  # Section 4.2, expert trajectories per task
    demo_keep: str = "success"  # success | all: which expert episodes become demonstrations
    demo_seed: int = 0  # seeds the demonstration episodes (shared by all training seeds)
    max_path_length: int = 200  # App. C.2.2, episode length
    eval_episodes: int = 100  # Section 4.2, rollouts per seen task after each task
    curve: str = "dense"  # Task-1 curve: dense (metrics.eval_schedule) | end | off | in-task steps "250,500,..."
    curve_episodes: int = 50  # rollouts per curve point (Figure 2, Table 2; ours)
    curve_all_tasks: bool = False  # evaluate every seen task on the curve schedule (Appendix D tables)
    path_episodes: int = 4  # Task 1's first evaluation episodes drawn from above after each task (ours; 0 = none)
    rollout_batch: int = 100  # environments stepped together in one batched rollout
    env_workers: int = 0  # processes stepping the rollout environments (0 = this process; identical results)
    log_every: int = 100  # steps between train records (losses, Eq. 9 term norms, Eq. 6) in metrics.jsonl
    checkpoint_every: int = 2000  # steps between mid-task checkpoints (and one at every task end)
    workers: int = 0  # processes collecting demos (0 = all CPU cores)
    data_dir: str = "data"  # demonstration cache
    device: str = "auto"  # auto | cpu | cuda[:i]
    threads: int = 0  # torch CPU threads (0 = torch's default)
    compile: str = "auto"  # torch.compile of the denoiser: auto (reduce-overhead on CUDA, off on CPU) | off | default
    #   | reduce-overhead (experiment.compile_denoiser)
    progress: bool = True  # tqdm bars


# fields that do not change the numbers a run produces: they may differ when a run is resumed
RUNTIME_FIELDS = ("workers", "env_workers", "data_dir", "device", "threads", "compile", "progress")
PRESETS = {
    "paper": {},
    # CPU, 2 cores: CW10's tasks 6-10 in the paper's order, a SUBSEQUENCE, sized from the single-task curves
    # (results/cw10_single_task_cpu): hammer (Task 1 of CW10) is at 0.40 after 4,000 steps and push at 0.00, which
    # no 30-minute run can change; handle-press-side and window-close are learned in 500 steps. Adam 3e-3 with a
    # cosine decay in each task (lr_at) and DDIM 5 at evaluation: measured against 1e-3 constant and DDIM 10/20 in
    # results/cw10_levers
    "small": dict(tasks="handle-press-side,push,shelf-place,window-close,peg-unplug-side", model="small",
                  batch_size=32, lr=3e-3, lr_schedule="cosine", lr_warmup=50, steps_per_task=500,
                  fisher_samples=256, replay_rollouts=5, replay_windows=40, demos_per_task=50, ddim_steps=5,
                  eval_episodes=20, curve="125,250,375,500", curve_episodes=20, rollout_batch=20, log_every=50,
                  checkpoint_every=250, reset_optimizer=False),  # Adam carried, as in its committed results
    # CPU, one core: all ten CW10 tasks in the paper's order, sized from the single-task curves
    # (results/cw10_curves_cpu). Predicting x0 learns tasks at this budget that epsilon does not; batch 128 learns
    # push-wall and peg-unplug-side, which batch 32 never does, and 7 of 8 hard-or-noisy tasks reach 0.5 within a
    # 750-step cosine (hammer 0.90). A batch-128 tr step costs about 0.64 s on one core, so Task 1 (hammer, learned
    # from random weights, no replay) gets those 750 steps and each later task 500 (at 500 steps of the 750-step
    # schedule 5 of 8 were at 0.5). DDIM 5 at evaluation (results/cw10_levers, results/cw10_curves_cpu).
    # Replay: as many teacher rollouts per task as demonstrations, the paper's ratio (2,500 and 2,500, Section 4.2 and
    # Table 4); the batch-32 pilot's 5 (a tenth) forgot hammer within one task. Task 1 curve at 50 and 250 steps of
    # each later task and at its end: Table 2's CW10 recoveries are mostly 2-100 steps; Adam's moments are cleared at
    # each boundary (reset_optimizer, the default): carried over, finetune's network collapsed (results/cw10_medium_cpu)
    "medium": dict(model="small", prediction="sample", batch_size=128, lr=3e-3, lr_schedule="cosine", lr_warmup=50,
                   first_task_steps=750, steps_per_task=500, fisher_samples=256, replay_rollouts=50,
                   replay_windows=40, demos_per_task=50, ddim_steps=5, eval_episodes=20, curve="50,250",
                   curve_episodes=20, rollout_batch=20, log_every=50, checkpoint_every=250),
    # one H100 with 16 cores, three methods at once: the small model at batch 256, compiled (auto).
    # A first guess, NOT yet run on a GPU (no device time left, 2026-11-25): size it from `bench.py step --device cuda`
    "gpu": dict(model="small", batch_size=256, lr=1e-3, steps_per_task=3000, fisher_samples=2048,
                replay_rollouts=20, replay_windows=40, demos_per_task=100, ddim_steps=10, eval_episodes=20,
                curve="500,1000,1500,2000,3000", curve_episodes=20, rollout_batch=20, env_workers=4, workers=5,
                log_every=100, checkpoint_every=1000),
    "smoke": dict(model="tiny", tasks="hammer,push-wall", batch_size=8, steps_per_task=8, fisher_samples=16,
                  replay_rollouts=2, replay_windows=4, demos_per_task=3, demo_keep="all", max_path_length=20,
                  ddim_steps=2, eval_episodes=2, curve_episodes=2, rollout_batch=2, path_episodes=2, log_every=4,
                  checkpoint_every=3, workers=1, progress=False),
}
CHOICES = {"method": learners.METHODS, "model": tuple(MODELS), "lr_schedule": ("constant", "cosine"),
           "prediction": diffusion.PREDICTIONS,
           "fisher": fisher.FISHER_KINDS, "demo_keep": ("success", "all"), "compile": experiment.COMPILE_MODES}
STREAM_TRAIN, STREAM_NOISE, STREAM_EVAL, STREAM_FISHER, STREAM_REPLAY = range(5)  # experiment.generator's last key


def task_list(cfg: Config) -> list[str]:
    return [t.strip() for t in cfg.tasks.split(",") if t.strip()]


def sequence_name(tasks: list[str]) -> str:
    """'CW10' for the whole sequence, else which tasks of it (1-based, paper order) the run has, e.g.
    'subsequence of CW10: tasks 6-10'; written into the summary and printed when the run starts."""
    if tasks == list(cw10_data.CW10):
        return "CW10"
    idx = [cw10_data.CW10.index(t) + 1 for t in tasks]
    consecutive = len(idx) > 1 and idx == list(range(idx[0], idx[-1] + 1))
    span = f"{idx[0]}-{idx[-1]}" if consecutive else ",".join(map(str, idx))
    return f"subsequence of CW10: task{'s' * (len(idx) > 1)} {span}"


def validate(cfg: Config) -> None:
    """ValueError (one line) for any configuration that cannot run; nothing is written before this passes."""
    experiment.validate_common(cfg, positive=(
        "batch_size", "lr", "steps_per_task", "fisher_samples", "replay_rollouts", "replay_windows", "demos_per_task",
        "max_path_length", "eval_episodes", "curve_episodes", "rollout_batch", "log_every", "checkpoint_every"),
        non_negative=("first_task_steps", "path_episodes", "lr_warmup", "lam", "beta", "replay_ratio", "inner_lr",
                      "vr_momentum", "grad_clip", "workers", "env_workers", "threads"), below_one=("ema",))
    tasks = task_list(cfg)
    runfiles.require(bool(tasks) and len(set(tasks)) == len(tasks),
                     f"--tasks must name distinct tasks: {cfg.tasks!r}")
    for t in tasks:
        runfiles.require(t in cw10_data.CW10, f"unknown task {t!r}; CW10 tasks are {', '.join(cw10_data.CW10)}")
    S, O, A = cfg.horizon, cfg.obs_horizon, cfg.action_chunk
    runfiles.require(S >= 4 and S % 4 == 0, f"--horizon S={S} must be a positive multiple of 4 (the UNet halves it)")
    runfiles.require(O >= 1 and A >= 1, f"--obs-horizon O={O} and --action-chunk A={A} must be >= 1")
    runfiles.require(O + A <= S + 1, f"O + A = {O + A} > S + 1 = {S + 1}: executed actions must fit in the horizon")
    runfiles.require(cw10_data.windows_per_episode(cfg.max_path_length, S, O, A) >= 1,
                     f"--max-path-length {cfg.max_path_length} is too short for S={S}, O={O}, A={A}: an episode "
                     f"needs at least S - A - O + 2 = {S - A - O + 2} steps")
    runfiles.require(1 <= cfg.ddim_steps <= cfg.train_timesteps, f"--ddim-steps must be in 1..{cfg.train_timesteps}")
    runfiles.require(cfg.path_episodes <= cfg.eval_episodes,
                     f"--path-episodes ({cfg.path_episodes}) must be at most --eval-episodes ({cfg.eval_episodes})")
    n_replay = replay_batch_size(cfg)
    runfiles.require(cfg.method not in ("ftml", "vrmcl") or (cfg.batch_size % 2 == 0 and n_replay % 2 == 0),
                     f"{cfg.method} splits each batch into support and query halves: --batch-size "
                     f"({cfg.batch_size}) and the replay batch ({n_replay}) must be even")
    runfiles.require(not learners.uses_replay(cfg.method) or n_replay >= 1, "--replay-ratio gives no replay")
    metrics.curve_points(cfg.curve, max(cfg.steps_per_task, cfg.first_task_steps))  # ValueError if malformed
    runfiles.check_writable(cfg.data_dir, "the demo cache")


def task_steps(cfg: Config, k: int) -> int:
    """Updates of task k (0-based): steps_per_task, or first_task_steps for Task 1 when set."""
    return cfg.first_task_steps if k == 0 and cfg.first_task_steps else cfg.steps_per_task


def replay_batch_size(cfg: Config) -> int:
    return int(round(cfg.replay_ratio * cfg.batch_size))  # Table 4: replay ratio 1.0

# ----------------------------------------------------------------------------------------------------------------
# the continual run


def build_model(cfg: Config, device) -> torch.nn.Module:
    return MODELS[cfg.model](obs_dim=cw10_data.OBS_DIM, obs_horizon=cfg.obs_horizon, action_dim=cw10_data.ACT_DIM,
                             horizon=cfg.horizon).to(device)


def train(cfg: Config, folder: experiment.RunFolder, device) -> dict:
    """The continual loop over cfg's tasks in `folder` (resumed from its checkpoint if it has one)."""
    tasks, sched = task_list(cfg), diffusion.Schedule(cfg.train_timesteps, prediction=cfg.prediction)
    envs = cw10_data.EnvPool(cfg.env_workers, cfg.max_path_length)
    lo, hi = cw10_data.obs_bounds(cw10_data.make_env(tasks[0], cfg.max_path_length))
    torch.manual_seed(cfg.seed)  # parameter init (the only use of the global RNG)
    model = build_model(cfg, device)
    learner, pool, teacher, state = experiment.start(folder, cfg, model, sched)
    experiment.compile_denoiser(model, cfg.compile)  # in place: parameters and state_dict keys are unchanged
    if teacher is not None:
        experiment.compile_denoiser(teacher, cfg.compile)
    log = folder.logger.log
    print(f"{cfg.method}: {len(tasks)} tasks ({sequence_name(tasks)}): {', '.join(tasks)}", flush=True)

    def save():
        experiment.check_parameters(model, f"task {state['task'] + 1} step {state['step']}")
        folder.save(experiment.checkpoint(cfg, state, model, learner, pool, teacher))

    def evaluate(j: int, n: int, in_task: int, paths: list | None = None) -> float:
        """Success rate of task j over n episodes (fixed evaluation seeds, DDIM noise keyed by time and task)."""
        experiment.check_parameters(model, f"task {state['task'] + 1} step {in_task}")
        g = experiment.generator(cfg.seed, state["task"], in_task, STREAM_EVAL, j, device=device)
        with folder.clock.timed("eval_s"):
            ok, _ = cw10_data.run_episodes(model, sched, cfg, tasks[j], n, cw10_data.EPISODES_EVAL, g, envs, lo, hi,
                                           device, paths=paths)
        return float(ok.mean())

    def curve_point(j: int, in_task: int, score: float) -> None:
        state["curves"].setdefault(str(j), []).append((state["global_step"], in_task, state["task"], score))
        log({"kind": "curve", "global_step": state["global_step"], "task": state["task"], "in_task_step": in_task,
             "eval_task": j, "success": score})

    start = time.perf_counter()
    while state["task"] < len(tasks):
        k = state["task"]
        steps = task_steps(cfg, k)
        # the task's end is always a curve point (the boundary's own evaluation, no extra rollouts): Figure 2 shows
        # it, and Table 2's reference (metrics.reference: the curve at the task's end, else R[j][j]) comes from it
        curve_at = metrics.task_curve_points(cfg.curve, steps) | ({steps} if cfg.curve != "off" else set())
        data = cw10_data.task_dataset(cfg, tasks[k], lo, hi, device)
        model.train()
        bar = tqdm(range(state["step"], steps), desc=f"task {k + 1} {tasks[k]}",
                   disable=not cfg.progress, initial=state["step"], total=steps)
        for s in bar:
            experiment.set_lr(learner, cfg, s, steps)
            g = experiment.generator(cfg.seed, k, s, STREAM_TRAIN)
            batch = data.sample(cfg.batch_size, g)  # (B, S, 4), (B, O, 39)
            replay_batch = pool.sample(replay_batch_size(cfg), g, device) if len(pool) else None
            noise = experiment.generator(cfg.seed, k, s, STREAM_NOISE, device=device)
            experiment.train_step(learner, batch, replay_batch, noise, state, folder, bar, cfg.log_every)
            if s + 1 in curve_at and s + 1 < steps:
                with experiment.averaged(learner):
                    for j in range(k + 1) if cfg.curve_all_tasks else [0]:
                        curve_point(j, s + 1, evaluate(j, cfg.curve_episodes, s + 1))
            experiment.step_end((s + 1) % cfg.checkpoint_every == 0 and s + 1 < steps, save)  # a stop: here
        bar.close()
        experiment.end_task(learner)
        # task boundary, the same steps in every experiment: (1) evaluate every seen task (row k of R),
        # (2) Fisher of task k, (3) teacher and replay pool of task k; nothing is estimated after the last task
        traces = []  # Task 1's evaluation episodes (raw observations): the first path_episodes are kept
        row = [evaluate(j, cfg.eval_episodes, steps, traces if j == 0 else None) for j in range(k + 1)]
        if cfg.path_episodes:
            state.setdefault("paths", []).append(cw10_paths.task_paths(traces, cfg.path_episodes, cfg.max_path_length))
        for j in range(k + 1) if cfg.curve_all_tasks else [0]:
            if steps in curve_at:
                curve_point(j, steps, row[j])
        state["R"].append(row + [None] * (len(tasks) - k - 1))
        print(f"[task {k + 1}/{len(tasks)} {tasks[k]}] step {state['global_step']} success: "
              + " ".join(f"{tasks[j]}={row[j]:.2f}" for j in range(k + 1))
              + f" mean {np.mean(row):.3f} ({cfg.eval_episodes} episodes each)", flush=True)
        log({"kind": "eval", "global_step": state["global_step"], "task": k, "success": row})
        if k + 1 < len(tasks):
            if learners.uses_fisher(cfg.method):
                with torch.compiler.set_stance("force_eager"):  # torch.func transforms on the eager forward
                    F = fisher.estimate_on_task(
                        model, sched, data.get, len(data), cfg.fisher_samples, cfg.batch_size,
                        experiment.generator(cfg.seed, k, STREAM_FISHER),
                        experiment.generator(cfg.seed, k, STREAM_FISHER, 1, device=device), cfg.fisher, cfg.progress)
                experiment.add_fisher(learner, F, log, k, state["global_step"])
            if learners.uses_replay(cfg.method):
                teacher = replay.frozen_copy(model)  # an eager copy: compiled below like the model
                experiment.compile_denoiser(teacher, cfg.compile)
                learner.replay_loss_fn.set_teacher(teacher)
                g = experiment.generator(cfg.seed, k, STREAM_REPLAY, device=device)
                _, records = cw10_data.run_episodes(teacher, sched, cfg, tasks[k], cfg.replay_rollouts,
                                                    cw10_data.EPISODES_REPLAY, g, envs, lo, hi, device, record=True)
                cond, x0 = torch.cat([c for c, _ in records]), torch.cat([x for _, x in records])  # (n, R, ...)
                keep = torch.linspace(0, cond.shape[1] - 1, min(cfg.replay_windows, cond.shape[1])).round().long()
                pool.add(k, x0[:, keep].flatten(0, 1), cond[:, keep].flatten(0, 1))  # evenly spaced windows
                log({"kind": "replay", "global_step": state["global_step"], "task": k, "pool_size": len(pool)})
            experiment.transition(learner, cfg, state)  # clears Adam's moments with --reset-optimizer (default)
        state["task"], state["step"], folder.task, folder.step = k + 1, 0, k + 1, 0
        save()
    summary = write_summary(cfg, folder, state, tasks)  # a finished run's only; rewritten by a rerun
    envs.close()
    print(f"done in {time.perf_counter() - start:.0f}s (this process): average success {summary['average']:.3f}, "
          f"forgetting {summary['forgetting']} -> {folder.out}")
    return summary


def write_summary(cfg: Config, folder, state: dict, tasks: list[str]) -> dict:
    """The finished run's task1_paths (npz, png), then summary.md, figures and, last, summary.json
    (metrics.write_run_outputs): a folder with a summary.json has every file; a rerun of a finished run writes them
    all again."""
    curves = {int(j): c for j, c in state["curves"].items()}
    summary = metrics.build_summary(
        cfg.method, cfg.seed, "cw10", tasks, state["R"], True, curves.pop(0, []), state["transitions"],
        metrics.SUCCESS_THRESHOLDS, task_curves=curves, provenance=experiment.provenance(folder),
        extra={"sequence": sequence_name(tasks), "eval_episodes": cfg.eval_episodes,
               "curve_episodes": cfg.curve_episodes, "ddim_steps": cfg.ddim_steps,
               "model": cfg.model, "steps_per_task": cfg.steps_per_task,
               "first_task_steps": cfg.first_task_steps, "prediction": cfg.prediction, "fisher": cfg.fisher})
    if state.get("paths"):
        cw10_paths.write_paths(folder.out, state["paths"], tasks, f"{cfg.method} s{cfg.seed}", summary)
    metrics.write_run_outputs(folder.out, summary, "Task 1 success rate",
                              f"CW10 Task 1 ({tasks[0]}), {cfg.method}, seed {cfg.seed}")
    return summary

# ----------------------------------------------------------------------------------------------------------------
# Table 5 grid and bench


# Appendix C.2.3, Table 5: the (S, O, A) grid and the paper's mean single-task success over the ten tasks
TABLE5 = {"S8_O6_A2": 0.859, "S8_O8_A1": 0.808, "S8_O4_A4": 0.744, "S8_O4_A2": 0.622, "S16_O8_A8": 0.511,
          "S16_O8_A4": 0.486, "S16_O12_A4": 0.449, "S16_O16_A1": 0.326, "S32_O16_A4": 0.184, "S32_O24_A4": 0.177,
          "S32_O16_A8": 0.121, "S32_O16_A16": 0.081, "S32_O24_A8": 0.034}


def grid(cfg: Config, names: str, out: str, device) -> None:
    """Table 5's protocol: one model per (S, O, A) and task, trained from scratch; out/table5.md."""
    names = list(TABLE5) if names == "paper" else names.split(",")
    for name in names:
        runfiles.require(name in TABLE5, f"--grid takes 'paper' or names from Table 5 like S8_O6_A2, got {name!r}")
    runs = {}
    for name in names:
        S, O, A = (int(v) for v in re.fullmatch(r"S(\d+)_O(\d+)_A(\d+)", name).groups())
        for task in task_list(cfg):
            runs[name, task] = dataclasses.replace(cfg, tasks=task, horizon=S, obs_horizon=O, action_chunk=A)
    for sub in runs.values():
        validate(sub)
    lines = ["| Config | Mean success | Paper | " + " | ".join(task_list(cfg)) + " |",
             "|---|---|---|" + "---|" * len(task_list(cfg))]
    for name in names:
        success = []
        for task in task_list(cfg):
            with experiment.track(experiment.RunFolder(os.path.join(out, name, task), runs[name, task],
                                                       RUNTIME_FIELDS)) as folder:
                cw10_data.ensure_demos(runs[name, task], [task])
                success.append(train(runs[name, task], folder, device)["R"][0][0])
        lines.append(f"| {name} | {np.mean(success):.3f} | {TABLE5[name]} | " + " | ".join(f"{v:.2f}" for v in success)
                     + " |")
    text = f"Table 5 ({cfg.steps_per_task} steps, {cfg.eval_episodes} episodes, model {cfg.model})\n\n"
    text += "\n".join(lines)
    runfiles.atomic_write_text(os.path.join(out, "table5.md"), text + "\n")
    print(text)


def cpu_estimate(cfg: Config, device) -> str:
    """One line for whoever starts the paper's model on a CPU: the run's training time at this machine's step rate,
    measured now (one step of the run's method through bench.step_times, about a minute), and the CPU preset."""
    seconds = bench.step_times(model_name="unet1d_paper", batch_size=cfg.batch_size, rounds=1, device=device,
                               rows=(cfg.method,))[cfg.method][0]
    steps = sum(task_steps(cfg, k) for k in range(len(task_list(cfg))))
    hours = steps * seconds / 3600
    return (f"note: the paper's model on this CPU takes {seconds:.1f} s per {cfg.method} step (measured now), so "
            f"these {steps:,} steps need about {hours:,.0f} hours ({hours / 24:,.1f} days) before any evaluation; "
            f"`--preset medium` runs all ten CW10 tasks in about 1 h 20 min on one core (tr). Continuing as asked.")

# ----------------------------------------------------------------------------------------------------------------
# entry point


def main(argv=None) -> None:
    cfg, args = experiment.parse_config(Config, PRESETS, argv, __doc__.split("\n\n")[0], CHOICES, extra=[
        ("--grid", dict(default="", help="Table 5: 'paper' or names like S8_O6_A2,S8_O4_A4; single-task runs of "
                                         "--tasks, then OUT/table5.md")),
        ("--bench", dict(action="store_true", help="time rollouts (one at a time, batched, env workers) and demo "
                                                   "collection, then exit")),
        ("--compare", dict(nargs="+", metavar="RUN", help="write --out (a PNG): Task 1's episodes from above after "
                                                          "each task, one row per run folder, then exit"))])
    if args.compare:
        runfiles.require(bool(args.out) and args.out.endswith(".png"), "--compare needs --out FILE.png")
        return cw10_paths.compare(args.compare, args.out)
    validate(cfg)
    device = experiment.setup_torch(cfg.device, cfg.threads)
    if args.bench:
        return bench.cw10_rollouts(cfg, build_model(cfg, device), task_list(cfg)[0], device)
    out = args.out or experiment.default_out("cw10", args.preset, cfg)
    if args.grid:
        return grid(cfg, args.grid, out, device)
    if device.type == "cpu" and cfg.model == "paper":
        print(cpu_estimate(cfg, device), flush=True)
    with experiment.track(experiment.RunFolder(out, cfg, RUNTIME_FIELDS)) as folder:
        cw10_data.ensure_demos(cfg, task_list(cfg))
        train(cfg, folder, device)


if __name__ == "__main__":
    experiment.run(main)
