"""Continual diffusion-policy training on Continual World 10 (CW10): paper Section 4.2, Tables 1, 2, 4, 5, Figure 2,
Appendix C.2.

    python train_cw10.py --method tr                      # the paper's configuration (Table 4), 10 tasks
    python train_cw10.py --method tr --preset small       # a 15-30 min CPU run over all ten tasks
    python train_cw10.py --method tr --preset smoke       # seconds; used by the tests
    python train_cw10.py --out runs/x ...                 # rerun the same command to resume after a crash
    python train_cw10.py --single-task hammer             # one task from scratch (Table 5's protocol)
    python train_cw10.py --grid paper --out runs/t5       # the Table 5 grid over (S, O, A), writes table5.md
    python train_cw10.py --bench                          # steps/s per method, batched vs serial rollouts, demos

Pipeline (one file, sections in this order):
  configuration  one @dataclass Config (defaults = Table 4), presets, argparse flags generated from it;
  environments   Meta-World 3.1.1 MT1 -v3 tasks, fresh goal and object position at every reset (reference notes §4);
  demonstrations scripted experts (metaworld.policies), parallel collection, npz cache under data/;
  windows        training windows of S steps: observations o_{s..s+O-1} condition the action sequence a_{s..s+S-1};
  rollouts       batched receding-horizon execution: all episodes of a task step together, one policy call each;
  training       the continual loop (learner from meta_baselines.make_learner), Fisher, replay pool, checkpoints;
  Table 5, bench, entry point.

Notation: S sequence length (action horizon), O observation horizon, A executed action chunk, D_o = 39
observation dims, D_a = 4 action dims, B batch, k task index (0-based), s step within task k (0-based).
A window holds observations o_{s..s+O-1} and actions a_{s..s+S-1}; a_t is the expert's action at o_t. At run time
the policy sees the last O observations (o_t is the newest, position O-1), samples S actions with DDIM and executes
positions O-1 .. O-1+A-1, i.e. a_t .. a_{t+A-1}, then re-plans (Diffusion Policy's convention, reference notes §5).

Determinism: every random draw at step s of task k comes from a generator seeded from (seed, k, s, stream)
(`gen`); evaluation episodes use fixed environment seeds; so a run resumed from a checkpoint on the CPU reproduces
the uninterrupted run exactly (tests/test_cw10.py kills a run with SIGKILL and compares summary.json).

Deviations from the paper:
- paper: Meta-World v1 tasks (Continual World); here: the -v3 versions, the only ones in metaworld 3.1.1.
- paper: "2500 trajectories per task" of the scripted experts; here: 2,500 *successful* trajectories per task
  (failed expert episodes are discarded and more seeds are drawn; Config.demo_keep = "all" keeps every episode).
  The experts fail on up to 31% of push-back episodes (reference notes §4); imitating a failure teaches it.
- paper: observations normalisation unspecified; here: fixed bounds, not data (see `obs_bounds`).
- paper: the number of rollouts behind each point of Figure 2 is not given; here Config.curve_episodes (50).
- paper: replay buffer "2,500 rollouts/task"; here: the frozen policy is rolled out replay_rollouts times in the
  finished task's environment and every re-planning window of those rollouts (its observation window and the
  action sequence the teacher sampled for it with DDIM) is a replay sample, subsampled to replay_windows per
  rollout to bound memory (Config.replay_windows).
- gradient clipping: not stated for CW10; off by default (Config.grad_clip = 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import multiprocessing
import os
import sys
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

import diffusion
import fisher
import meta_baselines
import metrics
import replay
import unet

# ----------------------------------------------------------------------------------------------------------------
# configuration

# Continual World's CW10 order (awarelab/continual_world tasks.py; reference notes §4), as Meta-World v3 names.
CW10 = ("hammer", "push-wall", "faucet-close", "push-back", "stick-pull", "handle-press-side", "push",
        "shelf-place", "window-close", "peg-unplug-side")
OBS_DIM, ACT_DIM = 39, 4  # Appendix C.2.2
MODELS = {"paper": unet.unet1d_paper, "small": unet.unet1d_small, "tiny": unet.unet1d_tiny}


@dataclass
class Config:
    """Every hyperparameter of a run. Defaults are the paper's (Table 4 unless tagged otherwise)."""

    method: str = "tr"  # finetune | ewc | replay | tr | ftml | vrmcl (Section 4 baselines)
    seed: int = 0  # training seed (model init, batches, noise); Table 4 averages 4 seeds
    tasks: str = ",".join(CW10)  # comma-separated task sequence (CW10 order, reference notes §4)
    model: str = "paper"  # paper (83.3M, App. C.2.1) | small | tiny (unet.py factories)
    batch_size: int = 256  # Table 4 (bilevel: 128 support + 128 query)
    lr: float = 2e-4  # Table 4, Adam (outer)
    steps_per_task: int = 50_000  # Table 4, gradient / meta updates per task
    fisher_samples: int = 20_000  # Table 4, rank-1 Fisher samples per task
    lam: float = 12.0  # Table 4, EWC lambda
    beta: float = 1.0  # replay loss weight (authors' variant, reference notes §2)
    replay_ratio: float = 1.0  # Table 4, replay batch = ratio * batch
    replay_rollouts: int = 2500  # Table 4, buffer size per task in rollouts
    replay_windows: int = 20  # replay samples kept per rollout (ours, bounds memory; see docstring)
    inner_lr: float = 1e-4  # Table 4, SGD inner step of ftml / vrmcl
    vr_momentum: float = 0.15  # VR-MCL r (reference notes §3; not in the paper)
    grad_clip: float = 0.0  # max gradient norm, 0 = off (not stated for CW10)
    horizon: int = 8  # S, Section 4.2 / Table 5
    obs_horizon: int = 6  # O, Section 4.2 / Table 5
    action_chunk: int = 2  # A, Section 4.2 / Table 5
    train_timesteps: int = 1000  # App. C.2.1, diffusion steps T
    ddim_steps: int = 50  # App. C.2.1, DDIM steps at inference
    demos_per_task: int = 2500  # Section 4.2, expert trajectories per task
    demo_keep: str = "success"  # success | all: which expert episodes become demonstrations (see docstring)
    demo_seed: int = 0  # seeds the demonstration episodes (shared by all training seeds)
    max_path_length: int = 200  # App. C.2.2, episode length
    eval_episodes: int = 100  # Section 4.2, rollouts per task after each task
    curve_episodes: int = 50  # rollouts per point of the Task-1 curve (Figure 2, Table 2; ours)
    curve_all_tasks: bool = False  # also evaluate every seen task on the schedule (Appendix D tables)
    dense_schedule: bool = True  # evaluate on metrics.eval_schedule (2, 4, ..., 1000, 2000, ...); else task ends
    rollout_batch: int = 100  # envs stepped together in one batched rollout
    log_every: int = 100  # steps between training-loss records in metrics.jsonl
    ckpt_every: int = 2000  # steps between mid-task checkpoints (also at every task boundary)
    workers: int = 0  # processes for demo collection (0 = all CPU cores)
    data_dir: str = "data"  # demo cache
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = torch's default; 1 is fastest on a busy 2-core machine)
    progress: bool = True  # tqdm bars

# fields that do not change the numbers a run produces (ignored when a resumed config is compared)
RUNTIME_FIELDS = ("workers", "data_dir", "device", "threads", "progress", "log_every", "ckpt_every")

PRESETS = {
    "paper": {},
    # small: ~27-30 min on 2 idle CPU cores for tr (README "CW10 small preset"); lr 1e-3 instead of 2e-4 because 200
    # steps per task at 2e-4 leave the loss ~1.5x higher (600-step hammer runs, loss at step 200: 0.071 vs 0.049)
    "small": dict(model="small", batch_size=32, lr=1e-3, steps_per_task=200, fisher_samples=256, replay_rollouts=5,
                  replay_windows=40, demos_per_task=20, ddim_steps=5, eval_episodes=10, curve_episodes=10,
                  rollout_batch=10, log_every=50, ckpt_every=100, dense_schedule=False),
    "smoke": dict(model="tiny", tasks="hammer,push-wall", batch_size=8, steps_per_task=8, fisher_samples=16,
                  replay_rollouts=2, replay_windows=4, demos_per_task=3, demo_keep="all", max_path_length=20,
                  ddim_steps=2, eval_episodes=2, curve_episodes=2, rollout_batch=2, log_every=4, ckpt_every=3,
                  workers=1, progress=False),
}


def task_list(cfg: Config) -> list[str]:
    return [t.strip() for t in cfg.tasks.split(",") if t.strip()]


def validate(cfg: Config) -> None:
    """Raise ValueError with a one-line message for any configuration that cannot run."""
    if cfg.method not in meta_baselines.METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(meta_baselines.METHODS)}")
    from metaworld.policies import ENV_POLICY_MAP
    tasks = task_list(cfg)
    if not tasks:
        raise ValueError("no tasks given")
    for t in tasks:
        if f"{t}-v3" not in ENV_POLICY_MAP:
            raise ValueError(f"unknown task {t!r}; CW10 tasks are {', '.join(CW10)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"a task appears twice in {cfg.tasks!r}")
    S, O, A = cfg.horizon, cfg.obs_horizon, cfg.action_chunk
    if S < 4 or S % 4:
        raise ValueError(f"horizon S={S} must be a positive multiple of 4 (the 1D UNet halves it twice)")
    if O < 1 or A < 1:
        raise ValueError(f"obs_horizon O={O} and action_chunk A={A} must be >= 1")
    if O + A > S + 1:
        raise ValueError(f"O + A = {O + A} > S + 1 = {S + 1}: executed actions O-1..O+A-2 must fit in the horizon")
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    for name in ("batch_size", "steps_per_task", "fisher_samples", "replay_rollouts", "replay_windows",
                 "demos_per_task", "max_path_length", "eval_episodes", "curve_episodes", "rollout_batch",
                 "log_every", "ckpt_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 1 <= cfg.ddim_steps <= cfg.train_timesteps:
        raise ValueError(f"ddim_steps must be in 1..{cfg.train_timesteps}, got {cfg.ddim_steps}")
    for name in ("lam", "beta", "replay_ratio", "grad_clip", "vr_momentum"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.inner_lr < 0:
        raise ValueError("lr must be > 0 and inner_lr >= 0")
    n_replay = replay_batch_size(cfg)
    if cfg.method in ("ftml", "vrmcl") and (cfg.batch_size % 2 or n_replay % 2):
        raise ValueError(f"{cfg.method} splits each batch into support and query halves: batch_size "
                         f"({cfg.batch_size}) and replay batch ({n_replay}) must be even")
    if cfg.demo_keep not in ("success", "all"):
        raise ValueError(f"demo_keep must be 'success' or 'all', got {cfg.demo_keep!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")


def replay_batch_size(cfg: Config) -> int:
    return int(round(cfg.replay_ratio * cfg.batch_size))  # Table 4: replay ratio 1.0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), as every script of this repository."""

    def error(self, message):
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="named overrides of the defaults")
    p.add_argument("--out", default="", help="run folder (default runs/<method>__<seed>__<time>); rerun the same "
                                             "command with the same --out to resume")
    p.add_argument("--resume", default="", help="resume the run in this folder with its stored config")
    p.add_argument("--single-task", default="", help="train this one task from scratch (Table 5's protocol)")
    p.add_argument("--grid", default="", help="Table 5 grid: 'paper' or 'S,O,A;S,O,A;...'; one single-task run "
                                              "per (config, task), then <out>/table5.md")
    p.add_argument("--bench", action="store_true", help="print throughput measurements and exit")
    p.add_argument("--bench-steps", type=int, default=3, help="timed training steps per method in --bench")
    p.add_argument("--bench-presets", default="paper,small", help="presets whose training steps/s --bench measures")
    for f in fields(Config):
        kind = _bool if f.type in ("bool", bool) else {"int": int, "float": float, "str": str}.get(f.type, f.type)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                       help=f"(default {f.default!r}, preset may override)")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults <- preset <- explicit flags."""
    values = dict(PRESETS[args.preset])
    for f in fields(Config):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    if args.single_task:
        values["tasks"] = args.single_task
    return Config(**values)


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def gen(seed: int, *keys: int, device="cpu") -> torch.Generator:
    """A generator seeded from (seed, keys...): every random draw of a run comes from one of these."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 31 ^ int(state[1]))


# random streams (the last key of `gen`)
STREAM_TRAIN, STREAM_EVAL, STREAM_FISHER, STREAM_REPLAY, STREAM_INIT = range(5)
# environment-seed kinds (episode seeds differ between demos, evaluation and replay rollouts)
EPISODES_DEMO, EPISODES_EVAL, EPISODES_REPLAY = range(3)

# ----------------------------------------------------------------------------------------------------------------
# environments (reference notes §4: metaworld 3.1.1 facts)


@functools.lru_cache(maxsize=None)
def _mt1(name: str):
    """metaworld.MT1 builds 50 task descriptions (seconds); one per task name and process is enough."""
    import metaworld
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metaworld.MT1(name, seed=0)


def make_env(task: str, max_path_length: int):
    """One Meta-World v3 env with a fresh goal and object position at every reset (Continual World's random_init_all).

    MT1 (not ML1) keeps the goal in obs[36:39]. `reset(seed=...)` is ignored by Meta-World: call env.seed(s) first.
    """
    name = f"{task}-v3"
    mt1 = _mt1(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = mt1.train_classes[name]()
        env.set_task(mt1.train_tasks[0])
    env._freeze_rand_vec = False  # new random goal/object vector at every reset
    env.seeded_rand_vec = True  # ... drawn from env.np_random, which env.seed() sets
    env.max_path_length = max_path_length  # truncation at 200 steps (App. C.2.2); stepping past it raises
    return env


def reset_env(env, seed: int) -> np.ndarray:
    env.seed(int(seed))
    obs, _ = env.reset()
    return obs


def episode_seeds(kind: int, seed: int, task: str, start: int, n: int) -> np.ndarray:
    """Environment seeds of episodes start..start+n-1 of a kind (demo/eval/replay); independent of task order."""
    ss = np.random.SeedSequence([kind, seed, zlib.crc32(task.encode())])
    base = ss.generate_state(1, dtype=np.uint32)[0]
    return (int(base) * 1_000_003 + np.arange(start, start + n, dtype=np.int64)) % (2 ** 31 - 1)


class EnvCache:
    """Environments kept between evaluations (building one takes ~0.2 s and ~24 MB); at most `max_tasks` tasks."""

    def __init__(self, max_path_length: int, max_tasks: int = 2):
        self.max_path_length, self.max_tasks, self.envs = max_path_length, max_tasks, {}

    def get(self, task: str, n: int) -> list:
        envs = self.envs.pop(task, [])
        envs += [make_env(task, self.max_path_length) for _ in range(n - len(envs))]
        self.envs[task] = envs  # most recently used last
        while len(self.envs) > self.max_tasks:
            self.envs.pop(next(iter(self.envs)))
        return envs[:n]


def obs_bounds(env) -> tuple[np.ndarray, np.ndarray]:
    """Fixed per-dimension observation bounds (39,) from the env, no data: o_norm = 2 (o - lo) / (hi - lo) - 1.

    Layout (Meta-World v3): [0:3] hand xyz, [3] gripper, [4:7] object 1 xyz, [7:11] object 1 quaternion,
    [11:14] object 2 xyz, [14:18] object 2 quaternion, [18:36] the same 18 values one step earlier, [36:39] goal.
    The observation space is finite only for the hand and gripper (the hand box of SawyerXYZEnv); object and goal
    positions live in the same workspace, so they reuse the hand box widened to include 0 (the padding of absent
    objects, e.g. the second object of push); quaternions lie in [-1, 1]. The bounds are
    the same for every task, so normalisation never uses data of tasks not yet seen. Values outside are not clipped.
    """
    low, high = env.observation_space.low[:4].astype(np.float64), env.observation_space.high[:4].astype(np.float64)
    hand_lo, hand_hi = low[:3], high[:3]
    pos_lo, pos_hi = np.minimum(hand_lo, 0.0), np.maximum(hand_hi, 0.0)  # absent objects are zero-padded
    frame_lo = np.concatenate([hand_lo, low[3:4], pos_lo, -np.ones(4), pos_lo, -np.ones(4)])  # (18,)
    frame_hi = np.concatenate([hand_hi, high[3:4], pos_hi, np.ones(4), pos_hi, np.ones(4)])
    lo = np.concatenate([frame_lo, frame_lo, pos_lo]).astype(np.float32)  # (39,)
    hi = np.concatenate([frame_hi, frame_hi, pos_hi]).astype(np.float32)
    return lo, hi


def normalise_obs(obs, lo, hi):
    return 2.0 * (obs - lo) / (hi - lo) - 1.0  # (..., 39) -> roughly [-1, 1]

# ----------------------------------------------------------------------------------------------------------------
# demonstrations: scripted experts, parallel collection, npz cache


def collect_episodes(task: str, seeds, max_path_length: int):
    """Roll out the task's scripted expert for each seed. Returns obs (n, T, 39), actions (n, T, 4), success (n,).

    obs[t] is the observation at which actions[t] was taken; actions are clipped to [-1, 1] (the experts exceed it;
    reference notes §4). An episode succeeds if any step has info["success"] (Continual World's rule).
    """
    from metaworld.policies import ENV_POLICY_MAP
    env = make_env(task, max_path_length)
    policy = ENV_POLICY_MAP[f"{task}-v3"]()
    T = max_path_length
    obs_all = np.zeros((len(seeds), T, OBS_DIM), np.float32)
    act_all = np.zeros((len(seeds), T, ACT_DIM), np.float32)
    success = np.zeros(len(seeds), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Constant(s) may be too high": the reason for the clip below
        for i, s in enumerate(seeds):
            obs = reset_env(env, s)
            for t in range(T):
                action = np.clip(policy.get_action(obs), -1.0, 1.0)
                obs_all[i, t], act_all[i, t] = obs, action
                obs, _, _, _, info = env.step(action)
                success[i] |= bool(info["success"])
    return obs_all, act_all, success


def _collect_job(job):
    return collect_episodes(*job)


def demo_path(cfg: Config, task: str) -> str:
    return os.path.join(cfg.data_dir, f"cw10_{task}_n{cfg.demos_per_task}_T{cfg.max_path_length}_"
                                      f"{cfg.demo_keep}_seed{cfg.demo_seed}.npz")


def collect_demos(cfg: Config, task: str) -> dict:
    """demos_per_task expert episodes (successful ones only if demo_keep == "success"), in seed order."""
    n, T = cfg.demos_per_task, cfg.max_path_length
    workers = cfg.workers or os.cpu_count() or 1
    chunk = max(1, min(25, n // workers or 1))
    kept, seeds_kept, attempted = [], [], 0
    bar = tqdm(total=n, desc=f"demos {task}", disable=not cfg.progress)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        while len(seeds_kept) < n:
            if attempted > 4 * n + 100:
                raise RuntimeError(f"{task}: the expert succeeded on only {len(seeds_kept)} of {attempted} episodes")
            want = n - len(seeds_kept)
            budget = want if cfg.demo_keep == "all" else int(want * 1.15) + workers
            jobs = []
            for start in range(attempted, attempted + budget, chunk):
                stop = min(start + chunk, attempted + budget)
                jobs.append((task, episode_seeds(EPISODES_DEMO, cfg.demo_seed, task, start, stop - start), T))
            attempted += budget
            results = pool.imap(_collect_job, jobs) if pool else map(_collect_job, jobs)
            for (_, seeds, _), (o, a, ok) in zip(jobs, results):
                keep = np.ones_like(ok) if cfg.demo_keep == "all" else ok
                for i in np.flatnonzero(keep)[: n - len(seeds_kept)]:
                    kept.append((o[i], a[i], ok[i]))
                    seeds_kept.append(seeds[i])
                bar.update(min(int(keep.sum()), n - bar.n))
    finally:
        bar.close()
        if pool:
            pool.terminate()
    return {"obs": np.stack([k[0] for k in kept]), "actions": np.stack([k[1] for k in kept]),
            "success": np.array([k[2] for k in kept]), "seeds": np.array(seeds_kept, np.int64),
            "attempted": np.int64(attempted), "task": np.str_(task), "max_path_length": np.int64(T)}


def load_demos(cfg: Config, task: str) -> dict:
    """Read and check a cached demo file; ValueError (one line) if it is corrupt or does not match the config."""
    path = demo_path(cfg, task)
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:  # zip / npy format errors of every kind
        raise ValueError(f"corrupt demo cache {path} ({type(e).__name__}); delete it to collect again") from None
    n, T = cfg.demos_per_task, cfg.max_path_length
    shapes = {"obs": (n, T, OBS_DIM), "actions": (n, T, ACT_DIM), "success": (n,), "seeds": (n,)}
    for key, shape in shapes.items():
        if key not in d or d[key].shape != shape:
            raise ValueError(f"corrupt demo cache {path} ({key} missing or not of shape {shape}); delete it")
    if str(d.get("task")) != task or not np.isfinite(d["obs"]).all() or np.abs(d["actions"]).max() > 1:
        raise ValueError(f"corrupt demo cache {path} (wrong task or values); delete it to collect again")
    return d


def ensure_demos(cfg: Config, tasks: list[str]) -> None:
    """Collect (in parallel) and cache every task's demos that are not cached yet; check the cached ones."""
    for task in tasks:
        path = demo_path(cfg, task)
        if os.path.exists(path):
            load_demos(cfg, task)
            continue
        start = time.perf_counter()
        d = collect_demos(cfg, task)
        os.makedirs(cfg.data_dir, exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            np.savez_compressed(f, **d)
        os.replace(path + ".tmp", path)
        print(f"demos {task}: kept {len(d['seeds'])} of {int(d['attempted'])} episodes "
              f"(expert success {d['success'].mean():.2f}) in {time.perf_counter() - start:.1f}s -> {path}")

# ----------------------------------------------------------------------------------------------------------------
# training windows


class WindowDataset:
    """All length-S windows of a task's episodes, padded at the edges by repeating the first / last frame.

    Window w = (episode e, start s) with s in [-(O-1), T-S+A-1] (Diffusion Policy pads O-1 frames before and A-1
    after): cond = o_{s..s+O-1} (O, 39), x0 = a_{s..s+S-1} (S, 4); indices below 0 read frame 0, above T-1 frame T-1.
    """

    def __init__(self, obs: torch.Tensor, actions: torch.Tensor, S: int, O: int, A: int):
        N, T, _ = obs.shape  # obs (N, T, 39) normalised, actions (N, T, 4) in [-1, 1]
        self.S, self.O = S, O
        self.per_episode = T - S + A + O - 1  # starts -(O-1) .. T-S+A-1
        if self.per_episode < 1:
            raise ValueError(f"episodes of {T} steps are too short for windows (S={S}, O={O}, A={A})")
        time_idx = torch.arange(-(O - 1), T - S + A - 1 + S, device=obs.device).clamp(0, T - 1)  # padded time
        self.obs, self.actions = obs[:, time_idx], actions[:, time_idx]  # (N, T + O + A - 2, D)
        self.n = N * self.per_episode

    def __len__(self):
        return self.n

    def get(self, idx: torch.Tensor):
        """Windows idx (B,) -> (x0 (B, S, 4), cond (B, O, 39))."""
        e, start = idx // self.per_episode, idx % self.per_episode  # padded start = s + O - 1
        t = start[:, None] + torch.arange(self.S, device=idx.device)  # (B, S)
        x0 = self.actions[e[:, None], t]  # (B, S, 4)
        cond = self.obs[e[:, None], t[:, : self.O]]  # (B, O, 39)
        return x0, cond

    def sample(self, batch_size: int, generator: torch.Generator):
        return self.get(torch.randint(self.n, (batch_size,), generator=generator).to(self.obs.device))


def task_dataset(cfg: Config, task: str, lo, hi, device) -> WindowDataset:
    d = load_demos(cfg, task)
    obs = torch.from_numpy(normalise_obs(d["obs"], lo, hi).astype(np.float32)).to(device)
    actions = torch.from_numpy(d["actions"]).to(device)
    return WindowDataset(obs, actions, cfg.horizon, cfg.obs_horizon, cfg.action_chunk)

# ----------------------------------------------------------------------------------------------------------------
# batched receding-horizon rollouts


@torch.no_grad()
def rollout(model, sched, envs, seeds, cfg: Config, lo, hi, generator, device, record: bool = False):
    """Run len(envs) episodes in lock step: one DDIM policy call per re-planning step for all of them.

    Returns success (n,) bool (any step succeeded) and, if record, the re-planning windows
    (cond (n, R, O, 39) normalised, x0 (n, R, S, 4) the sampled action sequences), R = ceil(T / A).

    Without record, an episode that has succeeded is not stepped any more (success is "any step succeeded", so
    its later steps cannot change the result) and the rollout ends once every episode has succeeded. The policy
    is still called on all n episodes, so the DDIM noise drawn for the others is the same as without the shortcut.
    """
    n, O, A, S, T = len(envs), cfg.obs_horizon, cfg.action_chunk, cfg.horizon, cfg.max_path_length
    obs = np.stack([reset_env(env, s) for env, s in zip(envs, seeds)])  # (n, 39)
    history = np.repeat(obs[:, None], O, axis=1)  # (n, O, 39): the first observation repeated at reset
    success = np.zeros(n, bool)
    conds, plans = [], []
    for t0 in range(0, T, A):
        cond = torch.from_numpy(normalise_obs(history, lo, hi).astype(np.float32)).to(device)  # (n, O, 39)
        x0 = diffusion.ddim_sample(model, sched, (n, S, ACT_DIM), cond, steps=cfg.ddim_steps,
                                   generator=generator, device=device)  # (n, S, 4)
        if record:
            conds.append(cond.cpu())
            plans.append(x0.cpu())
        chunk = x0[:, O - 1: O - 1 + A].cpu().numpy().astype(np.float64)  # (n, A, 4): executed a_t..a_{t+A-1}
        for j in range(min(A, T - t0)):
            for i, env in enumerate(envs):
                if record or not success[i]:
                    obs[i], _, _, _, info = env.step(chunk[i, j])
                    success[i] |= bool(info["success"])
            history = np.concatenate([history[:, 1:], obs[:, None]], axis=1)  # (n, O, 39)
        if not record and success.all():
            break
    if not record:
        return success, None
    return success, (torch.stack(conds, 1), torch.stack(plans, 1))  # (n, R, O, 39), (n, R, S, 4)


def run_episodes(model, sched, cfg, task, n, kind, key, env_cache, lo, hi, device, record=False):
    """n episodes of `task` in batches of rollout_batch; episode seeds of `kind`, DDIM noise from gen(*key)."""
    was_training = model.training
    model.eval()
    g = gen(cfg.seed, *key, device=device)
    successes, records = [], []
    for start in range(0, n, cfg.rollout_batch):
        m = min(cfg.rollout_batch, n - start)
        seeds = episode_seeds(kind, cfg.seed if kind == EPISODES_REPLAY else 0, task, start, m)
        ok, rec = rollout(model, sched, env_cache.get(task, m), seeds, cfg, lo, hi, g, device, record)
        successes.append(ok)
        records.append(rec)
    model.train(was_training)
    return np.concatenate(successes), records

# ----------------------------------------------------------------------------------------------------------------
# continual training


def build_model(cfg: Config, device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # parameter init (the only use of the global RNG)
    return MODELS[cfg.model](obs_dim=OBS_DIM, obs_horizon=cfg.obs_horizon, action_dim=ACT_DIM,
                             horizon=cfg.horizon).to(device)


def estimate_fisher(model, sched, data: WindowDataset, cfg: Config, k: int, device):
    """Rank-1 Fisher (Eq. 12 approximated as rho u u^T; reference notes §1) on fisher_samples real windows of task k.

    Each pass draws its own windows and noise (t ~ U{0..T-1}, eps ~ N(0, I)) from gen(seed, k, STREAM_FISHER, pass).
    """
    def batches(pass_index):
        g_idx = gen(cfg.seed, k, STREAM_FISHER, pass_index)
        g_noise = gen(cfg.seed, k, STREAM_FISHER, pass_index, 1, device=device)
        for start in range(0, cfg.fisher_samples, cfg.batch_size):
            x0, cond = data.sample(min(cfg.batch_size, cfg.fisher_samples - start), g_idx)
            yield diffusion.with_noise(sched, (x0.to(device), cond.to(device)), g_noise)

    return fisher.Rank1Fisher.estimate(model, diffusion.loss_fn(sched), batches, progress=cfg.progress)


def replay_samples(teacher, sched, cfg: Config, task: str, k: int, env_cache, lo, hi, device):
    """Replay pool entries for finished task k: roll out the frozen teacher replay_rollouts times in the task's
    environment, record every re-planning window (cond) and the action sequence the teacher sampled for it with
    DDIM (x0), and keep replay_windows of them per rollout (evenly spaced in time)."""
    _, records = run_episodes(teacher, sched, cfg, task, cfg.replay_rollouts, EPISODES_REPLAY,
                              (k, STREAM_REPLAY), env_cache, lo, hi, device, record=True)
    cond = torch.cat([c for c, _ in records])  # (n, R, O, 39)
    x0 = torch.cat([x for _, x in records])  # (n, R, S, 4)
    R = cond.shape[1]
    keep = torch.linspace(0, R - 1, min(cfg.replay_windows, R)).round().long()
    return x0[:, keep].flatten(0, 1), cond[:, keep].flatten(0, 1)  # (n * w, S, 4), (n * w, O, 39)


class Run:
    """The state of one continual run that a checkpoint holds, and the files it writes."""

    def __init__(self, cfg: Config, out: str):
        self.cfg, self.out, self.tasks = cfg, out, task_list(cfg)
        self.device = resolve_device(cfg)
        self.sched = diffusion.Schedule(cfg.train_timesteps)
        self.model = build_model(cfg, self.device)
        kind = meta_baselines.replay_kind(cfg.method)
        self.replay_loss = replay.make_replay_loss(kind, self.sched) if kind else None
        self.learner = meta_baselines.make_learner(cfg.method, self.model, diffusion.loss_fn(self.sched),
                                                   self.replay_loss, cfg)
        self.pool = replay.ReplayPool()
        self.R = []  # score matrix rows, appended as tasks finish (metrics.py notation)
        self.curves = {}  # str(j) -> [(global_step, in_task_step, training_task, score)]
        self.task, self.step = 0, 0  # next: step `step` of task `task`
        self.env_cache = EnvCache(cfg.max_path_length)
        self.lo, self.hi = obs_bounds(self.env_cache.get(self.tasks[0], 1)[0])
        self.logger = metrics.JsonlLogger(os.path.join(out, "metrics.jsonl"))

    @property
    def global_step(self) -> int:
        return self.task * self.cfg.steps_per_task + self.step

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": asdict(self.cfg), "task": self.task, "step": self.step, "model": self.model.state_dict(),
                "learner": self.learner.state_dict(), "pool": self.pool.state_dict(),
                "replay_loss": self.replay_loss.state_dict() if self.replay_loss else None,
                "R": self.R, "curves": self.curves}

    def save(self) -> None:
        metrics.atomic_torch_save(self.state(), os.path.join(self.out, "checkpoint.pt"))

    def load(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        if ck["replay_loss"] is not None and ck["replay_loss"]["teacher"] is not None:
            self.replay_loss.set_teacher(replay.frozen_copy(self.model))
            self.replay_loss.load_state_dict(ck["replay_loss"])
        self.learner.load_state_dict(ck["learner"])
        self.pool.load_state_dict(ck["pool"])
        self.task, self.step, self.R, self.curves = ck["task"], ck["step"], ck["R"], ck["curves"]
        self.logger.truncate_after(self.global_step)

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, j: int, n: int) -> float:
        """Success rate of task j over n episodes (fixed evaluation seeds; noise from (seed, k, s, EVAL, j))."""
        ok, _ = run_episodes(self.model, self.sched, self.cfg, self.tasks[j], n, EPISODES_EVAL,
                             (self.task, self.step, STREAM_EVAL, j), self.env_cache, self.lo, self.hi, self.device)
        return float(ok.mean())

    def curve_point(self, j: int, in_task: int, score: float) -> None:
        self.curves.setdefault(str(j), []).append((self.global_step, in_task, self.task, score))
        self.logger.log({"kind": "curve", "global_step": self.global_step, "task": self.task,
                         "in_task_step": in_task, "eval_task": j, "success": score})

    # -- outputs ---------------------------------------------------------------------------------------------
    def write_summary(self, wall: float) -> dict:
        cfg = self.cfg
        transitions = [k * cfg.steps_per_task for k in range(1, len(self.R))]
        curve = self.curves.get("0", [])
        summary = metrics.build_summary(
            cfg.method, cfg.seed, "cw10", self.tasks, self.R, True, curve, transitions,
            metrics.SUCCESS_THRESHOLDS, task_curves={int(j): c for j, c in self.curves.items() if j != "0"},
            extra={"eval_episodes": cfg.eval_episodes, "curve_episodes": cfg.curve_episodes,
                   "ddim_steps": cfg.ddim_steps, "model": cfg.model, "steps_per_task": cfg.steps_per_task})
        print(f"wall time {wall:.0f}s (this process); summary -> {self.out}/summary.json")
        metrics.atomic_write_json(os.path.join(self.out, "summary.json"), summary)
        if curve:
            metrics.plot_figure2({cfg.method: [(g, s) for g, _, _, s in curve]}, transitions,
                                 os.path.join(self.out, "figure2.png"), "Task 1 success rate",
                                 f"CW10 Task 1 ({self.tasks[0]}), {cfg.method}, seed {cfg.seed}")
        return summary

    # -- the loop --------------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, start = self.cfg, time.perf_counter()
        schedule = set(metrics.eval_schedule(cfg.steps_per_task, dense=cfg.dense_schedule))
        n_replay, summary = replay_batch_size(cfg), None
        while self.task < len(self.tasks):
            k, task = self.task, self.tasks[self.task]
            data = task_dataset(cfg, task, self.lo, self.hi, self.device)
            self.model.train()
            bar = tqdm(range(self.step, cfg.steps_per_task), desc=f"task {k + 1} {task}", disable=not cfg.progress,
                       initial=self.step, total=cfg.steps_per_task)
            for s in bar:
                g_idx = gen(cfg.seed, k, s, STREAM_TRAIN)
                g_noise = gen(cfg.seed, k, s, STREAM_TRAIN, 1, device=self.device)
                x0, cond = data.sample(cfg.batch_size, g_idx)
                batch = (x0, cond)  # (B, S, 4), (B, O, 39) on the device
                replay_batch = self.pool.sample(n_replay, g_idx, self.device) if len(self.pool) else None
                logs = self.learner.step(batch, replay_batch, generator=g_noise)
                self.step = s + 1
                if self.step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{logs['loss']:.4f}")
                    self.logger.log({"kind": "train", "global_step": self.global_step, "task": k,
                                     "step": self.step, **{n: float(v) for n, v in logs.items()}})
                if self.step in schedule and self.step < cfg.steps_per_task:
                    for j in (range(k + 1) if cfg.curve_all_tasks else [0]):
                        self.curve_point(j, self.step, self.evaluate(j, cfg.curve_episodes))
                if self.step % cfg.ckpt_every == 0 and self.step < cfg.steps_per_task:
                    self.save()
            bar.close()
            self.finish_task(data)
            self.save()
            summary = self.write_summary(time.perf_counter() - start)
        return summary if summary is not None else self.write_summary(time.perf_counter() - start)

    def finish_task(self, data: WindowDataset) -> None:
        """Task boundary: evaluate all seen tasks (row k of R), then Fisher and replay pool for the next task."""
        cfg, k = self.cfg, self.task
        row = [None] * len(self.tasks)
        for j in range(k + 1):
            row[j] = self.evaluate(j, cfg.eval_episodes)
            if j == 0 or cfg.curve_all_tasks:
                self.curve_point(j, cfg.steps_per_task, row[j])
        self.R.append(row)
        seen = " ".join(f"{self.tasks[j]}={row[j]:.2f}" for j in range(k + 1))
        print(f"[task {k + 1}/{len(self.tasks)} {self.tasks[k]}] step {self.global_step} success: {seen} "
              f"mean {np.mean(row[: k + 1]):.3f} ({cfg.eval_episodes} episodes each)", flush=True)
        self.logger.log({"kind": "eval", "global_step": self.global_step, "task": k, "success": row[: k + 1],
                         "mean_success": float(np.mean(row[: k + 1]))})
        if k + 1 < len(self.tasks):
            if meta_baselines.uses_fisher(cfg.method):
                F = estimate_fisher(self.model, self.sched, data, cfg, k, self.device)
                self.learner.add_fisher(F)
                self.logger.log({"kind": "fisher", "global_step": self.global_step, "task": k, "rho": F.rho,
                                 "c_star": F.c_star, "n_samples": F.n_samples})
            if meta_baselines.uses_replay(cfg.method):
                teacher = replay.frozen_copy(self.model)
                self.replay_loss.set_teacher(teacher)
                x0, cond = replay_samples(teacher, self.sched, cfg, self.tasks[k], k, self.env_cache, self.lo,
                                          self.hi, self.device)
                self.pool.add(k, x0, cond)
                self.logger.log({"kind": "replay", "global_step": self.global_step, "task": k,
                                 "pool_size": len(self.pool)})
        self.task, self.step = k + 1, 0


def check_out(cfg: Config, out: str) -> None:
    """Fail early (before demos are collected) if `out` cannot be written or holds a run with another config."""
    config_path = os.path.join(out, "config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            raise ValueError(f"{config_path} is unreadable; use another --out") from None
        mine = asdict(cfg)
        diff = [k for k in mine if k not in RUNTIME_FIELDS and old.get(k) != mine[k]]
        if diff:
            raise ValueError(f"{out} holds a run with a different config ({', '.join(diff)}); use another --out")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write to output folder {out} ({parent} is not a writable folder)")


def prepare_out(cfg: Config, out: str) -> dict | None:
    """Create or reopen the run folder and write config.json; returns the checkpoint to resume from (or None)."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"cannot write to output folder {out} ({e.strerror})") from None
    metrics.atomic_write_json(os.path.join(out, "config.json"), asdict(cfg))
    ckpt_path = os.path.join(out, "checkpoint.pt")
    return torch.load(ckpt_path, map_location="cpu", weights_only=False) if os.path.exists(ckpt_path) else None


def setup_run(cfg: Config, out: str) -> dict | None:
    """Everything that can fail on bad input, in an order that leaves nothing half-written: config, output folder,
    demos (collected and cached, or checked), then config.json. ValueError (one line) on bad input."""
    validate(cfg)
    check_out(cfg, out)
    ensure_demos(cfg, task_list(cfg))
    return prepare_out(cfg, out)


def train_run(cfg: Config, out: str, ck: dict | None) -> dict:
    """The continual run in `out`, resumed from checkpoint `ck` if given."""
    run = Run(cfg, out)
    if ck is not None:
        run.load(ck)
        print(f"resuming {out} at task {run.task + 1}, step {run.step}")
    summary = run.train()
    print(f"done: average success {summary['average']:.3f}, forgetting {summary['forgetting']} -> {out}")
    return summary

# ----------------------------------------------------------------------------------------------------------------
# Table 5: single-task grid over (S, O, A)

# Appendix C.2.3, Table 5: (S, O, A) and the paper's mean success over the ten tasks
TABLE5 = ((8, 6, 2, 0.859), (8, 8, 1, 0.808), (8, 4, 4, 0.744), (8, 4, 2, 0.622), (16, 8, 8, 0.511),
          (16, 8, 4, 0.486), (16, 12, 4, 0.449), (16, 16, 1, 0.326), (32, 16, 4, 0.184), (32, 24, 4, 0.177),
          (32, 16, 8, 0.121), (32, 16, 16, 0.081), (32, 24, 8, 0.034))


def parse_grid(spec: str) -> list[tuple[int, int, int]]:
    if spec == "paper":
        return [(S, O, A) for S, O, A, _ in TABLE5]
    try:
        grid = [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]
    except ValueError:
        raise ValueError(f"--grid expects 'paper' or 'S,O,A;S,O,A;...', got {spec!r}") from None
    if not grid or any(len(g) != 3 for g in grid):
        raise ValueError(f"--grid expects 'paper' or 'S,O,A;S,O,A;...', got {spec!r}")
    return grid


def run_grid(cfg: Config, grid: list[tuple[int, int, int]], out: str) -> str:
    """Table 5 protocol: one model per (config, task) trained from scratch; mean final success over the tasks."""
    cells = {}
    for S, O, A in grid:
        for task in task_list(cfg):
            sub = dataclasses.replace(cfg, horizon=S, obs_horizon=O, action_chunk=A, tasks=task)
            folder = os.path.join(out, f"S{S}_O{O}_A{A}", task)
            summary = train_run(sub, folder, setup_run(sub, folder))
            cells.setdefault((S, O, A), {})[task] = summary["R"][0][0]
    paper = {(S, O, A): m for S, O, A, m in TABLE5}
    rows = sorted(cells.items(), key=lambda kv: -np.mean(list(kv[1].values())))
    tasks = task_list(cfg)
    lines = ["| Config | S | O | A | Mean success | Paper | " + " | ".join(tasks) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(tasks)]
    for (S, O, A), per_task in rows:
        ref = f"{paper[(S, O, A)]:.3f}" if (S, O, A) in paper else "—"
        lines.append(f"| S{S}_O{O}_A{A} | {S} | {O} | {A} | {np.mean(list(per_task.values())):.3f} | {ref} | "
                     + " | ".join(f"{per_task[t]:.2f}" for t in tasks) + " |")
    text = (f"Table 5 (single-task, {cfg.steps_per_task} steps, {cfg.eval_episodes} evaluation episodes per task, "
            f"model {cfg.model}, seed {cfg.seed})\n\n" + "\n".join(lines) + "\n")
    metrics.atomic_write_text(os.path.join(out, "table5.md"), text)
    metrics.atomic_write_json(os.path.join(out, "table5.json"),
                              [{"S": S, "O": O, "A": A, "success": per_task} for (S, O, A), per_task in rows])
    print(text)
    return text

# ----------------------------------------------------------------------------------------------------------------
# benchmark: training steps/s per method, batched vs serial rollouts, demo collection


def _timed(fn, reps: int, device) -> float:
    """Seconds per call of fn, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def bench_train(cfg: Config, device, reps: int) -> dict:
    """Steps/s of each method's learner.step on random windows with one Fisher and a one-task replay pool in place
    (so ewc/tr pay for the penalty and replay/tr/ftml/vrmcl for the replay batch: the cost from task 2 on)."""
    S, O, B = cfg.horizon, cfg.obs_horizon, cfg.batch_size
    g = torch.Generator().manual_seed(0)

    def windows(n):
        return (torch.rand(n, S, ACT_DIM, generator=g).mul(2).sub(1).to(device),
                torch.rand(n, O, OBS_DIM, generator=g).mul(2).sub(1).to(device))

    result = {}
    for method in meta_baselines.METHODS:
        c = dataclasses.replace(cfg, method=method)
        sched, model = diffusion.Schedule(c.train_timesteps), build_model(c, device)
        kind = meta_baselines.replay_kind(method)
        replay_loss = replay.make_replay_loss(kind, sched, replay.frozen_copy(model)) if kind else None
        learner = meta_baselines.make_learner(method, model, diffusion.loss_fn(sched), replay_loss, c)
        if meta_baselines.uses_fisher(method):
            batches = [diffusion.with_noise(sched, windows(min(B, 64)))]
            learner.add_fisher(fisher.Rank1Fisher.estimate(model, diffusion.loss_fn(sched), batches))
        pool = replay.ReplayPool()
        pool.add(0, *windows(4 * B))
        batch, rb = windows(B), pool.sample(replay_batch_size(c), g, device) if kind else None
        result[method] = 1.0 / _timed(lambda: learner.step(batch, rb, generator=None), reps, device)
        print(f"bench {c.model} batch {B}: {method} {result[method]:.3f} steps/s", flush=True)
        del model, learner, replay_loss
    return result


def bench(cfg: Config, reps: int, presets: list[str]) -> None:
    """Print a table: batched vs one-at-a-time rollouts, demo collection speed, training steps/s per method."""
    device = resolve_device(cfg)
    rows = []
    # batched vs one-at-a-time rollouts, with this run's model and sampler settings
    env_cache, sched, task = EnvCache(cfg.max_path_length), diffusion.Schedule(cfg.train_timesteps), task_list(cfg)[0]
    model = build_model(cfg, device)
    lo, hi = obs_bounds(env_cache.get(task, 1)[0])
    n = cfg.rollout_batch
    times = {}
    for batch in (n, 1):
        c = dataclasses.replace(cfg, rollout_batch=batch)
        start = time.perf_counter()
        run_episodes(model, sched, c, task, n, EPISODES_EVAL, (0,), env_cache, lo, hi, device)
        times[batch] = time.perf_counter() - start
    rows.append((f"rollouts: {n} episodes x {cfg.max_path_length} steps, DDIM {cfg.ddim_steps}, model {cfg.model}",
                 "batched / serial speed-up", f"{times[1] / times[n]:.2f}x ({times[n]:.1f}s vs {times[1]:.1f}s)"))
    print(rows[-1], flush=True)
    # demo collection
    c = dataclasses.replace(cfg, demo_keep="all", workers=cfg.workers or os.cpu_count() or 1)
    n_demo = max(c.workers * 4, 8)
    c = dataclasses.replace(c, demos_per_task=n_demo)
    start = time.perf_counter()
    collect_demos(c, task)
    per_ep = (time.perf_counter() - start) / n_demo
    rows.append((f"demo collection ({n_demo} {task} episodes, {c.workers} workers, {cfg.max_path_length} steps)",
                 "episodes/s; est. 10 x 2,500", f"{1 / per_ep:.2f}/s; {per_ep * 25_000 / 60:.0f} min"))
    print(rows[-1], flush=True)
    # training steps/s per method
    for name in presets:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} in --bench-presets")
        c = dataclasses.replace(Config(**PRESETS[name]), seed=cfg.seed, device=cfg.device)
        for method, its in bench_train(c, device, reps).items():
            rows.append((f"train steps/s, {name} config (model {c.model}, batch {c.batch_size})", method, f"{its:.3f}"))
    print(f"\nbench on {device} ({torch.get_num_threads()} torch threads), torch {torch.__version__}")
    print("| measurement | method / quantity | value |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")

# ----------------------------------------------------------------------------------------------------------------
# entry point


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.resume:
            try:
                with open(os.path.join(args.resume, "config.json")) as f:
                    cfg = Config(**json.load(f))
            except (OSError, ValueError, TypeError):
                raise ValueError(f"no readable run config in {args.resume}") from None
        else:
            cfg = config_from_args(args)
        validate(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if resolve_device(cfg).type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls (convolutions use TF32 by default)
        if args.bench:
            bench(cfg, args.bench_steps, [p for p in args.bench_presets.split(",") if p])
            return
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = args.resume or args.out or os.path.join("runs", f"{cfg.method}__{cfg.seed}__{stamp}")
        if args.grid:
            grid = parse_grid(args.grid)
            for S, O, A in grid:
                validate(dataclasses.replace(cfg, horizon=S, obs_horizon=O, action_chunk=A))
            check_out(cfg, out)
        else:
            ck = setup_run(cfg, out)
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2)
    if args.grid:
        run_grid(cfg, grid, out)
    else:
        train_run(cfg, out, ck)


if __name__ == "__main__":
    main()
