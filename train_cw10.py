"""Continual diffusion-policy training on Continual World 10 (CW10): paper Section 4.2, Tables 1, 2, 4, 5, Figure 2,
Appendix C.2.

    python train_cw10.py --method tr                        # the paper's configuration (Table 4); a GPU run
    python train_cw10.py --method tr --preset small         # a CPU run over all ten tasks
    python train_cw10.py --method tr --preset smoke         # seconds; what the tests run
    python train_cw10.py --tasks hammer --curve 250,500,1000 --steps-per-task 1000   # one task, a learning curve
    python train_cw10.py --grid paper --tasks hammer        # Table 5's (S, O, A) grid, single-task runs
    python train_cw10.py --bench                            # batched vs serial rollouts, demo collection speed
Rerun the same command to resume a run that was stopped (Ctrl-C, kill -9): it continues from its last checkpoint
and writes the same files an uninterrupted run writes. Training steps/s per method: meta_baselines.py --bench.

Pipeline: Meta-World 3.1.1 MT1 -v3 tasks with a fresh goal and object position at every reset (reference notes
§4) -> scripted-expert demonstrations, collected in parallel and cached under data/ -> training windows ->
the continual loop (learner from meta_baselines.make_learner) with batched receding-horizon evaluation rollouts.

Notation: S sequence length (action horizon), O observation horizon, A executed action chunk, D_o = 39
observation dims, D_a = 4 action dims, B batch, k task index (0-based), s step within task k (0-based).
A window holds observations o_{s..s+O-1} and actions a_{s..s+S-1}; a_t is the expert's action at o_t. At run time
the policy sees the last O observations (o_t is the newest, position O-1), samples S actions with DDIM and executes
positions O-1 .. O-1+A-1, i.e. a_t .. a_{t+A-1}, then re-plans (Diffusion Policy's convention, reference notes §5).

Deviations from the paper:
- paper: Meta-World v1 tasks (Continual World); here: the -v3 versions, the only ones in metaworld 3.1.1.
- paper: "2500 trajectories per task" of the scripted experts; here: 2,500 *successful* trajectories per task
  (failed expert episodes are discarded; --demo-keep all keeps them). The experts fail on up to 31% of
  push-back episodes (reference notes §4); imitating a failure teaches it.
- paper: observation normalisation unspecified; here: fixed bounds from the environment, not data (`obs_bounds`).
- paper: the number of rollouts behind each point of Figure 2 is not given; here --curve-episodes (50).
- paper: replay buffer "2,500 rollouts/task"; here: the frozen policy is rolled out replay_rollouts times in the
  finished task's environment, and re-planning windows of those rollouts (observation window + the action
  sequence the teacher sampled for it) are the replay samples, replay_windows per rollout to bound memory.
- gradient clipping: not stated for CW10; off (grad_clip 0).
"""
from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import time
import warnings
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

import diffusion
import experiment
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
    method: str = "tr"  # finetune | ewc | replay | tr | ftml | vrmcl (Section 4)
    seed: int = 0  # training seed (model init, batches, noise); Table 4 averages 4 seeds
    tasks: str = ",".join(CW10)  # comma-separated task sequence (CW10 order, reference notes §4)
    model: str = "paper"  # paper (83.3M, App. C.2.1) | small | tiny (unet.py)
    batch_size: int = 256  # Table 4 (bilevel: 128 support + 128 query)
    lr: float = 2e-4  # Table 4, Adam (outer)
    steps_per_task: int = 50_000  # Table 4, gradient / meta updates per task
    fisher: str = "rank1"  # rank1 (Wang et al. 2026, the paper) | diag (classic EWC, for comparison)
    fisher_samples: int = 20_000  # Table 4, Fisher samples per task
    lam: float = 12.0  # Table 4, EWC lambda
    beta: float = 1.0  # replay loss weight (authors' variant, reference notes §2)
    replay_ratio: float = 1.0  # Table 4, replay batch = ratio x batch
    replay_rollouts: int = 2500  # Table 4, replay buffer per task in rollouts
    replay_windows: int = 20  # replay samples kept per rollout (ours, bounds memory)
    inner_lr: float = 1e-4  # Table 4, SGD inner step of ftml / vrmcl
    vr_momentum: float = 0.15  # VR-MCL r (reference notes §3; not in the paper)
    grad_clip: float = 0.0  # max gradient norm, 0 = off (not stated for CW10)
    horizon: int = 8  # S, Section 4.2 / Table 5
    obs_horizon: int = 6  # O, Section 4.2 / Table 5
    action_chunk: int = 2  # A, Section 4.2 / Table 5
    train_timesteps: int = 1000  # App. C.2.1, diffusion steps T
    ddim_steps: int = 50  # App. C.2.1, DDIM steps at inference
    demos_per_task: int = 2500  # Section 4.2, expert trajectories per task
    demo_keep: str = "success"  # success | all: which expert episodes become demonstrations
    demo_seed: int = 0  # seeds the demonstration episodes (shared by all training seeds)
    max_path_length: int = 200  # App. C.2.2, episode length
    eval_episodes: int = 100  # Section 4.2, rollouts per seen task after each task
    curve: str = "dense"  # Task-1 curve: dense (metrics.eval_schedule) | end | off | in-task steps "250,500,..."
    curve_episodes: int = 50  # rollouts per curve point (Figure 2, Table 2; ours)
    curve_all_tasks: bool = False  # evaluate every seen task on the curve schedule (Appendix D tables)
    rollout_batch: int = 100  # environments stepped together in one batched rollout
    log_every: int = 100  # steps between train records (losses, Eq. 9 term norms, Eq. 6) in metrics.jsonl
    checkpoint_every: int = 2000  # steps between mid-task checkpoints (and one at every task end)
    workers: int = 0  # processes collecting demos (0 = all CPU cores)
    data_dir: str = "data"  # demonstration cache
    device: str = "auto"  # auto | cpu | cuda[:i]
    threads: int = 0  # torch CPU threads (0 = torch's default)
    progress: bool = True  # tqdm bars


# fields that do not change the numbers a run produces: they may differ when a run is resumed
RUNTIME_FIELDS = ("workers", "data_dir", "device", "threads", "progress")
PRESETS = {
    "paper": {},
    "small": dict(model="small", batch_size=32, lr=1e-3, steps_per_task=200, fisher_samples=256, replay_rollouts=5,
                  replay_windows=40, demos_per_task=20, ddim_steps=5, eval_episodes=10, curve="end",
                  curve_episodes=10, rollout_batch=10, log_every=50, checkpoint_every=100),
    "smoke": dict(model="tiny", tasks="hammer,push-wall", batch_size=8, steps_per_task=8, fisher_samples=16,
                  replay_rollouts=2, replay_windows=4, demos_per_task=3, demo_keep="all", max_path_length=20,
                  ddim_steps=2, eval_episodes=2, curve_episodes=2, rollout_batch=2, log_every=4,
                  checkpoint_every=3, workers=1, progress=False),
}
CHOICES = {"method": meta_baselines.METHODS, "model": tuple(MODELS), "fisher": fisher.FISHER_KINDS,
           "demo_keep": ("success", "all")}
# random streams (the last key of experiment.generator) and environment-seed kinds
STREAM_TRAIN, STREAM_NOISE, STREAM_EVAL, STREAM_FISHER, STREAM_REPLAY = range(5)
EPISODES_DEMO, EPISODES_EVAL, EPISODES_REPLAY = range(3)


def task_list(cfg: Config) -> list[str]:
    return [t.strip() for t in cfg.tasks.split(",") if t.strip()]


def validate(cfg: Config) -> None:
    """ValueError (one line) for any configuration that cannot run; nothing is written before this passes."""
    experiment.validate_common(cfg, positive=(
        "batch_size", "lr", "steps_per_task", "fisher_samples", "replay_rollouts", "replay_windows", "demos_per_task",
        "max_path_length", "eval_episodes", "curve_episodes", "rollout_batch", "log_every", "checkpoint_every"),
        non_negative=("lam", "beta", "replay_ratio", "inner_lr", "vr_momentum", "grad_clip", "workers", "threads"))
    tasks = task_list(cfg)
    experiment.require(bool(tasks) and len(set(tasks)) == len(tasks), f"--tasks must name distinct tasks: {cfg.tasks!r}")
    for t in tasks:
        experiment.require(t in CW10, f"unknown task {t!r}; CW10 tasks are {', '.join(CW10)}")
    S, O, A = cfg.horizon, cfg.obs_horizon, cfg.action_chunk
    experiment.require(S >= 4 and S % 4 == 0, f"--horizon S={S} must be a positive multiple of 4 (the UNet halves it)")
    experiment.require(O >= 1 and A >= 1, f"--obs-horizon O={O} and --action-chunk A={A} must be >= 1")
    experiment.require(O + A <= S + 1, f"O + A = {O + A} > S + 1 = {S + 1}: executed actions must fit in the horizon")
    experiment.require(1 <= cfg.ddim_steps <= cfg.train_timesteps, f"--ddim-steps must be in 1..{cfg.train_timesteps}")
    n_replay = replay_batch_size(cfg)
    experiment.require(cfg.method not in ("ftml", "vrmcl") or (cfg.batch_size % 2 == 0 and n_replay % 2 == 0),
                       f"{cfg.method} splits each batch into support and query halves: --batch-size "
                       f"({cfg.batch_size}) and the replay batch ({n_replay}) must be even")
    experiment.require(not meta_baselines.uses_replay(cfg.method) or n_replay >= 1, "--replay-ratio gives no replay")
    metrics.curve_points(cfg.curve, cfg.steps_per_task)  # ValueError on a malformed --curve
    experiment.check_writable(cfg.data_dir, "the demo cache")


def replay_batch_size(cfg: Config) -> int:
    return int(round(cfg.replay_ratio * cfg.batch_size))  # Table 4: replay ratio 1.0

# ----------------------------------------------------------------------------------------------------------------
# environments (reference notes §4: metaworld 3.1.1 facts)


def _mujoco_warning(message: str) -> None:
    """MuJoCo's default warning handler appends to MUJOCO_LOG.TXT in the working folder; report it instead."""
    warnings.warn(f"MuJoCo: {message}", RuntimeWarning)


@functools.lru_cache(maxsize=None)
def _mt1(name: str):
    """metaworld.MT1 builds 50 task descriptions (seconds); one per task name and process is enough."""
    import metaworld
    import mujoco
    mujoco.set_mju_user_warning(_mujoco_warning)
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
    base = np.random.SeedSequence([kind, seed, zlib.crc32(task.encode())]).generate_state(1, dtype=np.uint32)[0]
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
    Only the hand and gripper have finite bounds; object and goal positions live in the same workspace, so they
    reuse the hand box widened to include 0 (the padding of absent objects); quaternions lie in [-1, 1]. The
    bounds are the same for every task, so normalisation never uses data of tasks not yet seen.
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
    env, policy, T = make_env(task, max_path_length), ENV_POLICY_MAP[f"{task}-v3"](), max_path_length
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
    kept, attempted = [], 0
    bar = tqdm(total=n, desc=f"demos {task}", disable=not cfg.progress)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        while len(kept) < n:
            experiment.require(attempted <= 4 * n + 100, f"{task}: the expert succeeded on only {len(kept)} of "
                                                          f"{attempted} episodes")
            budget = n - len(kept) if cfg.demo_keep == "all" else int((n - len(kept)) * 1.15) + workers
            jobs = [(task, episode_seeds(EPISODES_DEMO, cfg.demo_seed, task, a, min(chunk, attempted + budget - a)), T)
                    for a in range(attempted, attempted + budget, chunk)]
            attempted += budget
            for (_, seeds, _), (o, a, ok) in zip(jobs, pool.imap(_collect_job, jobs) if pool else map(_collect_job, jobs)):
                for i in np.flatnonzero(ok | (cfg.demo_keep == "all"))[: n - len(kept)]:
                    kept.append((o[i], a[i], ok[i], seeds[i]))
                bar.update(len(kept) - bar.n)
    finally:
        bar.close()
        if pool:
            pool.terminate()
    return {"obs": np.stack([k[0] for k in kept]), "actions": np.stack([k[1] for k in kept]),
            "success": np.array([k[2] for k in kept]), "seeds": np.array([k[3] for k in kept], np.int64),
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
    for key, shape in {"obs": (n, T, OBS_DIM), "actions": (n, T, ACT_DIM), "success": (n,), "seeds": (n,)}.items():
        experiment.require(key in d and d[key].shape == shape,
                           f"corrupt demo cache {path} ({key} missing or not of shape {shape}); delete it")
    experiment.require(str(d.get("task")) == task and np.isfinite(d["obs"]).all() and np.abs(d["actions"]).max() <= 1,
                       f"corrupt demo cache {path} (wrong task or values); delete it to collect again")
    return d


def ensure_demos(cfg: Config, tasks: list[str]) -> None:
    """Collect (in parallel) and cache every task's demos that are not cached yet; check the cached ones."""
    for task in tasks:
        path = demo_path(cfg, task)
        if os.path.exists(path):
            load_demos(cfg, task)
            continue
        start, d = time.perf_counter(), collect_demos(cfg, task)
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
        experiment.require(self.per_episode >= 1, f"episodes of {T} steps are too short for S={S}, O={O}, A={A}")
        time_idx = torch.arange(-(O - 1), T - S + A - 1 + S, device=obs.device).clamp(0, T - 1)  # padded time
        self.obs, self.actions = obs[:, time_idx], actions[:, time_idx]  # (N, T + O + A - 2, D)

    def __len__(self):
        return self.obs.shape[0] * self.per_episode

    def get(self, idx: torch.Tensor):
        """Windows idx (B,) -> (x0 (B, S, 4), cond (B, O, 39))."""
        idx = idx.to(self.obs.device)
        e, start = idx // self.per_episode, idx % self.per_episode  # padded start = s + O - 1
        t = start[:, None] + torch.arange(self.S, device=idx.device)  # (B, S)
        return self.actions[e[:, None], t], self.obs[e[:, None], t[:, : self.O]]  # (B, S, 4), (B, O, 39)

    def sample(self, batch_size: int, generator: torch.Generator):
        return self.get(torch.randint(len(self), (batch_size,), generator=generator))


def task_dataset(cfg: Config, task: str, lo, hi, device) -> WindowDataset:
    d = load_demos(cfg, task)
    obs = torch.from_numpy(normalise_obs(d["obs"], lo, hi).astype(np.float32)).to(device)
    return WindowDataset(obs, torch.from_numpy(d["actions"]).to(device), cfg.horizon, cfg.obs_horizon,
                         cfg.action_chunk)

# ----------------------------------------------------------------------------------------------------------------
# batched receding-horizon rollouts


@torch.no_grad()
def rollout(model, sched, envs, seeds, cfg: Config, lo, hi, generator, device, record: bool = False):
    """Run len(envs) episodes in lock step: one DDIM policy call per re-planning step for all of them.

    Returns success (n,) bool (any step succeeded) and, if record, the re-planning windows
    (cond (n, R, O, 39) normalised, x0 (n, R, S, 4) the sampled action sequences), R = ceil(T / A).
    Without record, an episode that has succeeded is not stepped any more (its later steps cannot change the
    result) and the rollout ends once all have succeeded; the policy is still called on all n episodes, so
    the DDIM noise drawn for the others does not change.
    """
    n, O, A, S, T = len(envs), cfg.obs_horizon, cfg.action_chunk, cfg.horizon, cfg.max_path_length
    obs = np.stack([reset_env(env, s) for env, s in zip(envs, seeds)])  # (n, 39)
    history = np.repeat(obs[:, None], O, axis=1)  # (n, O, 39): the first observation repeated at reset
    success, conds, plans = np.zeros(n, bool), [], []
    for t0 in range(0, T, A):
        cond = torch.from_numpy(normalise_obs(history, lo, hi).astype(np.float32)).to(device)  # (n, O, 39)
        x0 = diffusion.ddim_sample(model, sched, (n, S, ACT_DIM), cond, steps=cfg.ddim_steps, generator=generator,
                                   device=device)  # (n, S, 4)
        if record:
            conds.append(cond.cpu())
            plans.append(x0.cpu())
        chunk = x0[:, O - 1: O - 1 + A].cpu().numpy().astype(np.float64)  # (n, A, 4): executed a_t..a_{t+A-1}
        if not np.isfinite(chunk).all():
            raise experiment.Diverged("the policy returned non-finite actions")
        for j in range(min(A, T - t0)):
            for i, env in enumerate(envs):
                if record or not success[i]:
                    obs[i], _, _, _, info = env.step(chunk[i, j])
                    success[i] |= bool(info["success"])
            history = np.concatenate([history[:, 1:], obs[:, None]], axis=1)  # (n, O, 39)
        if not record and success.all():
            break
    return success, (torch.stack(conds, 1), torch.stack(plans, 1)) if record else None  # (n,R,O,39), (n,R,S,4)


def run_episodes(model, sched, cfg, task, n, kind, generator, env_cache, lo, hi, device, record=False):
    """n episodes of `task` in batches of rollout_batch, with the episode seeds of `kind`."""
    was_training = model.training
    model.eval()
    successes, records = [], []
    for start in range(0, n, cfg.rollout_batch):
        m = min(cfg.rollout_batch, n - start)
        seeds = episode_seeds(kind, cfg.seed if kind == EPISODES_REPLAY else 0, task, start, m)
        ok, rec = rollout(model, sched, env_cache.get(task, m), seeds, cfg, lo, hi, generator, device, record)
        successes.append(ok)
        records.append(rec)
    model.train(was_training)
    return np.concatenate(successes), records

# ----------------------------------------------------------------------------------------------------------------
# the continual run


def train(cfg: Config, folder: experiment.RunFolder, device) -> dict:
    """The continual loop over cfg's tasks in `folder` (resumed from its checkpoint if it has one)."""
    tasks, sched, env_cache = task_list(cfg), diffusion.Schedule(cfg.train_timesteps), EnvCache(cfg.max_path_length)
    lo, hi = obs_bounds(env_cache.get(tasks[0], 1)[0])
    torch.manual_seed(cfg.seed)  # parameter init (the only use of the global RNG)
    model = MODELS[cfg.model](obs_dim=OBS_DIM, obs_horizon=cfg.obs_horizon, action_dim=ACT_DIM,
                              horizon=cfg.horizon).to(device)
    learner = meta_baselines.make_learner(cfg.method, model, sched, cfg)
    pool, teacher = replay.ReplayPool(), None
    state = {"task": 0, "step": 0, "global_step": 0, "R": [], "curves": {}, "transitions": []}
    if folder.checkpoint is not None:
        ck = folder.checkpoint
        model.load_state_dict(ck["model"])
        learner.load_state_dict(ck["learner"])
        pool.load_state_dict(ck["pool"])
        if ck["teacher"] is not None:
            teacher = replay.frozen_copy(model)
            teacher.load_state_dict(ck["teacher"])
            learner.replay_loss_fn.set_teacher(teacher)
        state = ck["state"]
        print(f"resuming {folder.out} at task {state['task'] + 1}, step {state['step']}")
    folder.begin()
    log = folder.logger.log

    def save():
        experiment.check_parameters(model, f"task {state['task'] + 1} step {state['step']}")
        folder.save({"config": asdict(cfg), "state": state, "model": model.state_dict(), "pool": pool.state_dict(),
                     "learner": learner.state_dict(),
                     "teacher": None if teacher is None else teacher.state_dict()})

    def evaluate(j: int, n: int, in_task: int) -> float:
        """Success rate of task j over n episodes (fixed evaluation seeds, DDIM noise keyed by time and task)."""
        experiment.check_parameters(model, f"task {state['task'] + 1} step {in_task}")
        g = experiment.generator(cfg.seed, state["task"], in_task, STREAM_EVAL, j, device=device)
        ok, _ = run_episodes(model, sched, cfg, tasks[j], n, EPISODES_EVAL, g, env_cache, lo, hi, device)
        return float(ok.mean())

    def curve_point(j: int, in_task: int, score: float) -> None:
        state["curves"].setdefault(str(j), []).append((state["global_step"], in_task, state["task"], score))
        log({"kind": "curve", "global_step": state["global_step"], "task": state["task"], "in_task_step": in_task,
             "eval_task": j, "success": score})

    curve_at = set(metrics.curve_points(cfg.curve, cfg.steps_per_task))
    start = time.perf_counter()
    while state["task"] < len(tasks):
        k = state["task"]
        data = task_dataset(cfg, tasks[k], lo, hi, device)
        model.train()
        bar = tqdm(range(state["step"], cfg.steps_per_task), desc=f"task {k + 1} {tasks[k]}",
                   disable=not cfg.progress, initial=state["step"], total=cfg.steps_per_task)
        for s in bar:
            g = experiment.generator(cfg.seed, k, s, STREAM_TRAIN)
            batch = data.sample(cfg.batch_size, g)  # (B, S, 4), (B, O, 39)
            replay_batch = pool.sample(replay_batch_size(cfg), g, device) if len(pool) else None
            log_now = (s + 1) % cfg.log_every == 0
            logs = learner.step(batch, replay_batch, experiment.generator(cfg.seed, k, s, STREAM_NOISE, device=device),
                                log_terms=log_now)
            state["step"], state["global_step"], folder.step = s + 1, state["global_step"] + 1, s + 1
            if log_now:
                experiment.check_finite(f"task {k + 1} step {s + 1}", logs)
                logs = {name: float(v) for name, v in logs.items()}  # one host sync per log_every steps
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                log({"kind": "train", "global_step": state["global_step"], "task": k, "step": s + 1, **logs})
            if s + 1 in curve_at and s + 1 < cfg.steps_per_task:
                for j in range(k + 1) if cfg.curve_all_tasks else [0]:
                    curve_point(j, s + 1, evaluate(j, cfg.curve_episodes, s + 1))
            if (s + 1) % cfg.checkpoint_every == 0 and s + 1 < cfg.steps_per_task:
                save()
        bar.close()
        # task boundary, the same steps in every experiment: (1) evaluate every seen task (row k of R),
        # (2) Fisher of task k, (3) teacher and replay pool of task k; nothing is estimated after the last task
        row = [evaluate(j, cfg.eval_episodes, cfg.steps_per_task) for j in range(k + 1)]
        for j in range(k + 1) if cfg.curve_all_tasks else [0]:
            if cfg.steps_per_task in curve_at:
                curve_point(j, cfg.steps_per_task, row[j])
        state["R"].append(row + [None] * (len(tasks) - k - 1))
        print(f"[task {k + 1}/{len(tasks)} {tasks[k]}] step {state['global_step']} success: "
              + " ".join(f"{tasks[j]}={row[j]:.2f}" for j in range(k + 1))
              + f" mean {np.mean(row):.3f} ({cfg.eval_episodes} episodes each)", flush=True)
        log({"kind": "eval", "global_step": state["global_step"], "task": k, "success": row})
        if k + 1 < len(tasks):
            if meta_baselines.uses_fisher(cfg.method):
                F = fisher.estimate_on_task(
                    model, sched, data.get, len(data), cfg.fisher_samples, cfg.batch_size,
                    experiment.generator(cfg.seed, k, STREAM_FISHER),
                    experiment.generator(cfg.seed, k, STREAM_FISHER, 1, device=device), cfg.fisher, cfg.progress)
                experiment.check_finite(f"task {k + 1} Fisher", F.scalars())
                learner.add_fisher(F)
                log({"kind": "fisher", "global_step": state["global_step"], "task": k, **F.scalars(),
                     "diagnostics": F.diagnostics})
            if meta_baselines.uses_replay(cfg.method):
                teacher = replay.frozen_copy(model)
                learner.replay_loss_fn.set_teacher(teacher)
                g = experiment.generator(cfg.seed, k, STREAM_REPLAY, device=device)
                _, records = run_episodes(teacher, sched, cfg, tasks[k], cfg.replay_rollouts, EPISODES_REPLAY, g,
                                          env_cache, lo, hi, device, record=True)
                cond, x0 = torch.cat([c for c, _ in records]), torch.cat([x for _, x in records])  # (n, R, ...)
                keep = torch.linspace(0, cond.shape[1] - 1, min(cfg.replay_windows, cond.shape[1])).round().long()
                pool.add(k, x0[:, keep].flatten(0, 1), cond[:, keep].flatten(0, 1))  # evenly spaced windows
                log({"kind": "replay", "global_step": state["global_step"], "task": k, "pool_size": len(pool)})
            state["transitions"].append(state["global_step"])
        state["task"], state["step"], folder.task, folder.step = k + 1, 0, k + 1, 0
        save()
        if state["task"] < len(tasks):
            write_summary(cfg, folder, state, tasks)  # a run cut short keeps a valid summary
    summary = write_summary(cfg, folder, state, tasks)
    print(f"done in {time.perf_counter() - start:.0f}s (this process): average success {summary['average']:.3f}, "
          f"forgetting {summary['forgetting']} -> {folder.out}")
    return summary


def write_summary(cfg: Config, folder, state: dict, tasks: list[str]) -> dict:
    curves = {int(j): c for j, c in state["curves"].items()}
    summary = metrics.build_summary(
        cfg.method, cfg.seed, "cw10", tasks, state["R"], True, curves.pop(0, []), state["transitions"],
        metrics.SUCCESS_THRESHOLDS, task_curves=curves,
        extra={"eval_episodes": cfg.eval_episodes, "curve_episodes": cfg.curve_episodes, "ddim_steps": cfg.ddim_steps,
               "model": cfg.model, "steps_per_task": cfg.steps_per_task, "fisher": cfg.fisher})
    metrics.write_run_outputs(folder.out, summary, "Task 1 success rate",
                              f"CW10 Task 1 ({tasks[0]}), {cfg.method}, seed {cfg.seed}")
    return summary

# ----------------------------------------------------------------------------------------------------------------
# Table 5 grid and bench


# Appendix C.2.3, Table 5: (S, O, A) and the paper's mean success over the ten tasks
TABLE5 = {(8, 6, 2): 0.859, (8, 8, 1): 0.808, (8, 4, 4): 0.744, (8, 4, 2): 0.622, (16, 8, 8): 0.511,
          (16, 8, 4): 0.486, (16, 12, 4): 0.449, (16, 16, 1): 0.326, (32, 16, 4): 0.184, (32, 24, 4): 0.177,
          (32, 16, 8): 0.121, (32, 16, 16): 0.081, (32, 24, 8): 0.034}


def parse_grid(spec: str) -> list[tuple[int, int, int]]:
    if spec == "paper":
        return list(TABLE5)
    try:
        grid = [tuple(int(v) for v in item.split(",")) for item in spec.split(";") if item.strip()]
    except ValueError:
        grid = []
    experiment.require(bool(grid) and all(len(g) == 3 for g in grid), f"--grid expects 'paper' or 'S,O,A;...', "
                                                                      f"got {spec!r}")
    return grid


def bench(cfg: Config, device) -> None:
    """Batched vs one-episode-at-a-time rollouts with this configuration's model, and demo collection speed."""
    env_cache, sched, task = EnvCache(cfg.max_path_length), diffusion.Schedule(cfg.train_timesteps), task_list(cfg)[0]
    model = MODELS[cfg.model](obs_dim=OBS_DIM, obs_horizon=cfg.obs_horizon, action_dim=ACT_DIM,
                              horizon=cfg.horizon).to(device)
    lo, hi = obs_bounds(env_cache.get(task, 1)[0])
    times = {}
    for batch in (cfg.rollout_batch, 1):
        t0 = time.perf_counter()
        run_episodes(model, sched, dataclasses.replace(cfg, rollout_batch=batch), task, cfg.rollout_batch,
                     EPISODES_EVAL, torch.Generator(device).manual_seed(0), env_cache, lo, hi, device)
        times[batch] = time.perf_counter() - t0
    print(f"rollouts ({cfg.rollout_batch} {task} episodes x {cfg.max_path_length} steps, DDIM {cfg.ddim_steps}, "
          f"model {cfg.model}, {device}): batched {times[cfg.rollout_batch]:.1f}s, one at a time {times[1]:.1f}s, "
          f"{times[1] / times[cfg.rollout_batch]:.2f}x")
    c = dataclasses.replace(cfg, demo_keep="all", workers=cfg.workers or os.cpu_count() or 1)
    c = dataclasses.replace(c, demos_per_task=max(4 * c.workers, 8), progress=False)
    t0 = time.perf_counter()
    collect_demos(c, task)
    rate = c.demos_per_task / (time.perf_counter() - t0)
    print(f"demo collection ({c.demos_per_task} {task} episodes, {c.workers} workers): {rate:.2f} episodes/s, "
          f"10 x 2,500 demos in {25_000 / rate / 60:.0f} min")

# ----------------------------------------------------------------------------------------------------------------
# entry point


def main(argv=None) -> None:
    cfg, args = experiment.parse_config(Config, PRESETS, argv, __doc__.split("\n\n")[0], CHOICES, extra=[
        ("--grid", dict(default="", help="Table 5: 'paper' or 'S,O,A;S,O,A'; single-task runs, then table5.md")),
        ("--bench", dict(action="store_true", help="time batched vs serial rollouts and demo collection, then exit"))])
    validate(cfg)
    device = experiment.setup_torch(cfg.device, cfg.threads)
    if args.bench:
        return bench(cfg, device)
    out = args.out or experiment.default_out("cw10", args.preset, cfg)
    if not args.grid:
        with experiment.track(experiment.RunFolder(out, cfg, RUNTIME_FIELDS)) as folder:
            ensure_demos(cfg, task_list(cfg))
            train(cfg, folder, device)
        return
    cells = {}  # Table 5 protocol: one model per (S, O, A, task), trained from scratch; mean final success
    subs = [dataclasses.replace(cfg, horizon=S, obs_horizon=O, action_chunk=A, tasks=task)
            for S, O, A in parse_grid(args.grid) for task in task_list(cfg)]
    for sub in subs:
        validate(sub)
    for sub in subs:
        key = (sub.horizon, sub.obs_horizon, sub.action_chunk)
        with experiment.track(experiment.RunFolder(os.path.join(out, "S{}_O{}_A{}".format(*key), sub.tasks), sub,
                                                   RUNTIME_FIELDS)) as folder:
            ensure_demos(sub, [sub.tasks])
            cells.setdefault(key, {})[sub.tasks] = train(sub, folder, device)["R"][0][0]
    lines = ["| Config | Mean success | Paper | " + " | ".join(task_list(cfg)) + " |", "|---|---|---|" + "---|" * len(
        task_list(cfg))]
    for (S, O, A), per_task in sorted(cells.items(), key=lambda kv: -np.mean(list(kv[1].values()))):
        lines.append(f"| S{S}_O{O}_A{A} | {np.mean(list(per_task.values())):.3f} | {TABLE5.get((S, O, A), '—')} | "
                     + " | ".join(f"{v:.2f}" for v in per_task.values()) + " |")
    text = f"Table 5 ({cfg.steps_per_task} steps, {cfg.eval_episodes} episodes, model {cfg.model})\n\n" + "\n".join(lines)
    metrics.atomic_write_text(os.path.join(out, "table5.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    experiment.run(main)
