"""Continual World 10 data for train_cw10.py: Meta-World environments, scripted-expert demonstrations, training
windows and batched receding-horizon rollouts (paper Section 4.2, Appendix C.2; Continual World,
awarelab/continual_world; metaworld 3.1.1; Diffusion Policy, real-stanford/diffusion_policy).

Where the time goes: expert demonstrations are collected by a pool of worker processes (`collect_demos`, Config
`workers`); the rollouts' environments are stepped in this process or by worker processes (`EnvPool`, Config
`env_workers`), with the same results; the policy itself runs in this process, batched over all episodes.

Why a module of its own: this is the environment side of the CW10 experiment (about as long as the training
script itself); train_cw10.py keeps the configuration and the continual loop, which then read in one piece.

Notation: S sequence length (action horizon), O observation horizon, A executed action chunk, D_o = 39 observation
dims, D_a = 4 action dims, T episode length. A window holds observations o_{s..s+O-1} and actions a_{s..s+S-1};
a_t is the expert's action at o_t. At run time the policy sees the last O observations (o_t the newest, position
O-1), samples S actions with DDIM and executes positions O-1 .. O-1+A-1, i.e. a_t .. a_{t+A-1}, then re-plans
(Diffusion Policy's convention: its MultiStepWrapper, real-stanford/diffusion_policy).

Deviations from the paper:
- paper: Meta-World v1 tasks (Continual World); here: the -v3 versions, the only ones in metaworld 3.1.1.
- paper: "2500 trajectories per task" of the scripted experts; here: 2,500 *successful* trajectories per task
  (failed expert episodes are discarded; demo_keep "all" keeps them). The experts fail on up to 31% of
  push-back episodes (metaworld 3.1.1's policies: 69 of 100 here); imitating a failure teaches it.
- paper: observation normalisation unspecified; here: fixed bounds from the environment, not data (`obs_bounds`).
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import time
import warnings
import weakref
import zlib

import numpy as np
import torch
from tqdm import tqdm

import diffusion
import runfiles

# Continual World's CW10 order (awarelab/continual_world, continualworld/tasks.py), as Meta-World v3 names.
CW10 = ("hammer", "push-wall", "faucet-close", "push-back", "stick-pull", "handle-press-side", "push",
        "shelf-place", "window-close", "peg-unplug-side")
OBS_DIM, ACT_DIM = 39, 4  # Appendix C.2.2
EPISODES_DEMO, EPISODES_EVAL, EPISODES_REPLAY = range(3)  # environment-seed kinds: distinct episodes for each use

# ----------------------------------------------------------------------------------------------------------------
# environments (metaworld 3.1.1: MT1, set_task, env.seed, max_path_length)


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

    obs[t] is the observation at which actions[t] was taken; actions are clipped to [-1, 1] (metaworld 3.1.1's
    experts exceed it). An episode succeeds if any step has info["success"] (Continual World's rule).
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


def demo_path(cfg, task: str) -> str:
    return os.path.join(cfg.data_dir, f"cw10_{task}_n{cfg.demos_per_task}_T{cfg.max_path_length}_"
                                      f"{cfg.demo_keep}_seed{cfg.demo_seed}.npz")


def collect_demos(cfg, task: str) -> dict:
    """demos_per_task expert episodes (successful ones only if demo_keep == "success"), in seed order."""
    n, T = cfg.demos_per_task, cfg.max_path_length
    workers = cfg.workers or os.cpu_count() or 1
    chunk = max(1, min(25, n // workers or 1))
    kept, attempted = [], 0
    bar = tqdm(total=n, desc=f"demos {task}", disable=not cfg.progress)
    with runfiles.worker_pool(workers) if workers > 1 else contextlib.nullcontext() as pool, bar:
        while len(kept) < n:
            runfiles.require(attempted <= 4 * n + 100, f"{task}: the expert succeeded on only {len(kept)} of "
                                                            f"{attempted} episodes")
            budget = n - len(kept) if cfg.demo_keep == "all" else int((n - len(kept)) * 1.15) + workers
            jobs = [(task, episode_seeds(EPISODES_DEMO, cfg.demo_seed, task, a, min(chunk, attempted + budget - a)), T)
                    for a in range(attempted, attempted + budget, chunk)]
            attempted += budget
            results = pool.map(_collect_job, jobs) if pool else map(_collect_job, jobs)
            for (_, seeds, _), (o, a, ok) in zip(jobs, runfiles.pool_results(results, f"collecting {task}'s demos")):
                for i in np.flatnonzero(ok | (cfg.demo_keep == "all"))[: n - len(kept)]:
                    kept.append((o[i], a[i], ok[i], seeds[i]))
                bar.update(len(kept) - bar.n)
    return {"obs": np.stack([k[0] for k in kept]), "actions": np.stack([k[1] for k in kept]),
            "success": np.array([k[2] for k in kept]), "seeds": np.array([k[3] for k in kept], np.int64),
            "attempted": np.int64(attempted), "task": np.str_(task), "max_path_length": np.int64(T)}


def load_demos(cfg, task: str) -> dict:
    """Read and check a cached demo file; ValueError (one line) if it is corrupt or does not match the config."""
    path = demo_path(cfg, task)
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:  # zip / npy format errors of every kind
        raise ValueError(f"corrupt demo cache {path} ({type(e).__name__}); delete it to collect again") from None
    n, T = cfg.demos_per_task, cfg.max_path_length
    for key, shape in {"obs": (n, T, OBS_DIM), "actions": (n, T, ACT_DIM), "success": (n,), "seeds": (n,)}.items():
        runfiles.require(key in d and d[key].shape == shape,
                         f"corrupt demo cache {path} ({key} missing or not of shape {shape}); delete it")
    runfiles.require(str(d.get("task")) == task and np.isfinite(d["obs"]).all() and np.abs(d["actions"]).max() <= 1,
                     f"corrupt demo cache {path} (wrong task or values); delete it to collect again")
    return d


def ensure_demos(cfg, tasks: list[str]) -> None:
    """Collect (in parallel) and cache every task's demos that are not cached yet; check the cached ones."""
    for task in tasks:
        path = demo_path(cfg, task)
        if os.path.exists(path):
            load_demos(cfg, task)
            continue
        start, d = time.perf_counter(), collect_demos(cfg, task)
        os.makedirs(cfg.data_dir, exist_ok=True)
        runfiles.atomic_write(path, "wb", lambda f: np.savez_compressed(f, **d))
        print(f"demos {task}: kept {len(d['seeds'])} of {int(d['attempted'])} episodes "
              f"(expert success {d['success'].mean():.2f}) in {time.perf_counter() - start:.1f}s -> {path}")

# ----------------------------------------------------------------------------------------------------------------
# training windows


def windows_per_episode(T: int, S: int, O: int, A: int) -> int:
    """Training windows of one episode of T steps: starts -(O-1) .. T-S+A-1 (WindowDataset)."""
    return T - S + A + O - 1


class WindowDataset:
    """All length-S windows of a task's episodes, padded at the edges by repeating the first / last frame.

    Window w = (episode e, start s) with s in [-(O-1), T-S+A-1] (Diffusion Policy pads O-1 frames before and A-1
    after): cond = o_{s..s+O-1} (O, 39), x0 = a_{s..s+S-1} (S, 4); indices below 0 read frame 0, above T-1 frame T-1.
    """

    def __init__(self, obs: torch.Tensor, actions: torch.Tensor, S: int, O: int, A: int):
        N, T, _ = obs.shape  # obs (N, T, 39) normalised, actions (N, T, 4) in [-1, 1]
        self.S, self.O = S, O
        self.per_episode = windows_per_episode(T, S, O, A)  # starts -(O-1) .. T-S+A-1; >= 1 (train_cw10.validate)
        time_idx = torch.arange(-(O - 1), T - S + A - 1 + S, device=obs.device).clamp(0, T - 1)  # padded time
        self.obs, self.actions = obs[:, time_idx], actions[:, time_idx]  # (N, T + O + A - 2, D)

    def __len__(self):
        return self.obs.shape[0] * self.per_episode

    def get(self, idx: torch.Tensor):
        """Windows idx (B,) -> (x0 (B, S, 4), cond (B, O, 39))."""
        idx = idx.to(self.obs.device, non_blocking=True)  # no stream sync per training step on CUDA
        e, start = idx // self.per_episode, idx % self.per_episode  # padded start = s + O - 1
        t = start[:, None] + torch.arange(self.S, device=idx.device)  # (B, S)
        return self.actions[e[:, None], t], self.obs[e[:, None], t[:, : self.O]]  # (B, S, 4), (B, O, 39)

    def sample(self, batch_size: int, generator: torch.Generator):
        return self.get(torch.randint(len(self), (batch_size,), generator=generator))


def task_dataset(cfg, task: str, lo, hi, device) -> WindowDataset:
    d = load_demos(cfg, task)
    obs = torch.from_numpy(normalise_obs(d["obs"], lo, hi).astype(np.float32)).to(device)
    return WindowDataset(obs, torch.from_numpy(d["actions"]).to(device), cfg.horizon, cfg.obs_horizon,
                         cfg.action_chunk)

# ----------------------------------------------------------------------------------------------------------------
# environments stepped in lock step, in this process or in worker processes


class EnvGroup:
    """Episodes of one task, one environment each, reset and stepped together: the work of one process."""

    def __init__(self, max_path_length: int):
        self.cache, self.envs = EnvCache(max_path_length), []

    def reset(self, task: str, seeds) -> np.ndarray:
        """Start one episode per seed; returns the first observations (m, 39)."""
        self.envs = self.cache.get(task, len(seeds))
        self.obs = np.stack([reset_env(env, s) for env, s in zip(self.envs, seeds)])  # (m, 39)
        self.success = np.zeros(len(seeds), bool)
        return self.obs.copy()

    def step(self, actions: np.ndarray, stop_on_success: bool):
        """Execute actions (m, J, 4), step j for all episodes before step j + 1. Returns the observations after
        each step (J, m, 39) and success so far (m,): any step had info["success"] (Continual World's rule). With
        stop_on_success, an episode that has succeeded is not stepped any more (its observation stays)."""
        out = np.empty((actions.shape[1], *self.obs.shape), self.obs.dtype)  # (J, m, 39)
        for j in range(actions.shape[1]):
            for i, env in enumerate(self.envs):
                if not (stop_on_success and self.success[i]):
                    self.obs[i], _, _, _, info = env.step(actions[i, j])
                    self.success[i] |= bool(info["success"])
            out[j] = self.obs
        return out, self.success.copy()


def _env_worker(conn, max_path_length: int, parent: int) -> None:
    """A worker process of EnvPool: one EnvGroup that runs the commands it receives until the pipe closes or its
    parent ends (runfiles.die_with_parent), silently either way."""
    runfiles.die_with_parent(parent)
    group = EnvGroup(max_path_length)
    while True:
        try:
            method, args = conn.recv()
            try:
                reply = (True, getattr(group, method)(*args))
            except Exception as e:  # reported in the main process, which raises it
                reply = (False, f"{type(e).__name__}: {e}")
            conn.send(reply)
        except (EOFError, OSError):  # the main process closed the pipe or is gone
            return


def _close_workers(conns, procs) -> None:
    for conn in conns:
        conn.close()  # the worker's recv raises EOFError: it returns
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()


class EnvPool:
    """n episodes of one task in lock step: reset(task, seeds) -> obs (n, 39); step(actions (n, J, 4),
    stop_on_success) -> (obs (J, n, 39), success (n,)); EnvGroup's semantics.

    workers = 0: one EnvGroup in this process. workers > 0: that many spawned processes, each with its own
    EnvGroup; the episodes are split into contiguous groups (np.array_split) and the results concatenated back in
    order. Every episode runs in its own environment, seeded by reset_env before it starts, so both give
    identical results for the same seeds (tests/test_speed.py). Environments are built in the process that steps
    them and kept between rollouts (EnvCache); the workers end when the pool is closed or garbage collected.
    """

    def __init__(self, workers: int, max_path_length: int):
        self.local = EnvGroup(max_path_length) if workers == 0 else None
        self.conns, procs, ctx = [], [], multiprocessing.get_context("spawn")
        for _ in range(workers):
            conn, child = ctx.Pipe()
            procs.append(ctx.Process(target=_env_worker, args=(child, max_path_length, os.getpid()), daemon=True))
            procs[-1].start()
            child.close()
            self.conns.append(conn)
        self.sizes, self.procs = [], procs  # episodes per group of the current rollout
        self.close = weakref.finalize(self, _close_workers, self.conns, procs)

    def _died(self, g: int) -> runfiles.Fault:
        proc = self.procs[g]
        proc.join(timeout=1)
        code = proc.exitcode
        how = "its pipe closed" if code is None else f"killed by {signal.Signals(-code).name}" if code < 0 else \
            f"exit code {code}"
        return runfiles.Fault(f"environment worker {g} (process {proc.pid}) died ({how}); "
                              f"rerun the same command to resume from the last checkpoint")

    def _call(self, method: str, args: list[tuple]) -> list:
        """method(*args[g]) on group g, all groups at once; the results in group order."""
        if self.local is not None:
            return [getattr(self.local, method)(*args[0])]
        for g, (conn, a) in enumerate(zip(self.conns, args)):
            try:
                conn.send((method, a))
            except OSError:  # the pipe is broken: the process is gone
                raise self._died(g) from None
        replies = []
        for g, conn in enumerate(self.conns[: len(args)]):
            try:
                replies.append(conn.recv())  # every reply is read before raising: the pipes stay in step
            except (EOFError, OSError):  # the pipe closed: the process is gone
                raise self._died(g) from None
        for g, (ok, value) in enumerate(replies):
            if not ok:
                raise RuntimeError(f"environment worker {g}: {value}")
        return [value for _, value in replies]

    def reset(self, task: str, seeds) -> np.ndarray:
        seeds = np.asarray(seeds)
        groups = [seeds] if self.local is not None else [s for s in np.array_split(seeds, len(self.conns)) if len(s)]
        self.sizes = [len(s) for s in groups]
        return np.concatenate(self._call("reset", [(task, s) for s in groups]))  # (n, 39)

    def step(self, actions: np.ndarray, stop_on_success: bool):
        parts = np.split(actions, np.cumsum(self.sizes)[:-1])  # (n_g, J, 4) per group
        results = self._call("step", [(a, stop_on_success) for a in parts])
        return np.concatenate([o for o, _ in results], axis=1), np.concatenate([s for _, s in results])

# ----------------------------------------------------------------------------------------------------------------
# batched receding-horizon rollouts


@torch.no_grad()
def rollout(model, sched, envs: EnvPool, task: str, seeds, cfg, lo, hi, generator, device, record: bool = False,
            paths: list | None = None):
    """Run len(seeds) episodes of `task` in lock step: one DDIM policy call per re-planning step for all of them.

    Returns success (n,) bool (any step succeeded) and, if record, the re-planning windows
    (cond (n, R, O, 39) normalised, x0 (n, R, S, 4) the sampled action sequences), R = ceil(T / A).
    If `paths` is a list, (raw observations (n, L, 39) from the reset on, success (n,)) is appended to it.
    Without record, an episode that has succeeded is not stepped any more (its later steps cannot change the
    result) and the rollout ends once all have succeeded; the policy is still called on all n episodes, so
    the DDIM noise drawn for the others does not change.
    """
    n, O, A, S, T = len(seeds), cfg.obs_horizon, cfg.action_chunk, cfg.horizon, cfg.max_path_length
    obs = envs.reset(task, seeds)  # (n, 39)
    history = np.repeat(obs[:, None], O, axis=1)  # (n, O, 39): the first observation repeated at reset
    success, conds, plans, trace = np.zeros(n, bool), [], [], [obs]
    for t0 in range(0, T, A):
        cond = torch.from_numpy(normalise_obs(history, lo, hi).astype(np.float32)).to(device)  # (n, O, 39)
        x0 = diffusion.ddim_sample(model, sched, (n, S, ACT_DIM), cond, steps=cfg.ddim_steps, generator=generator,
                                   device=device)  # (n, S, 4)
        if record:
            conds.append(cond.cpu())
            plans.append(x0.cpu())
        chunk = x0[:, O - 1: O - 1 + A].cpu().numpy().astype(np.float64)  # (n, A, 4): executed a_t..a_{t+A-1}
        if not np.isfinite(chunk).all():
            raise runfiles.Diverged("the policy returned non-finite actions")
        obs_seq, success = envs.step(chunk[:, : T - t0], stop_on_success=not record)  # (J, n, 39), J = min(A, T-t0)
        for obs in obs_seq:
            history = np.concatenate([history[:, 1:], obs[:, None]], axis=1)  # (n, O, 39)
        if paths is not None:
            trace.extend(obs_seq)
        if not record and success.all():
            break
    if paths is not None:
        paths.append((np.stack(trace, axis=1), success.copy()))  # (n, L, 39), (n,)
    return success, (torch.stack(conds, 1), torch.stack(plans, 1)) if record else None  # (n,R,O,39), (n,R,S,4)


def run_episodes(model, sched, cfg, task, n, kind, generator, envs: EnvPool, lo, hi, device, record=False,
                 paths=None):
    """n episodes of `task` in batches of rollout_batch, with the episode seeds of `kind`; `paths` as rollout's."""
    was_training = model.training
    model.eval()
    successes, records = [], []
    for start in range(0, n, cfg.rollout_batch):
        m = min(cfg.rollout_batch, n - start)
        seeds = episode_seeds(kind, cfg.seed if kind == EPISODES_REPLAY else 0, task, start, m)
        ok, rec = rollout(model, sched, envs, task, seeds, cfg, lo, hi, generator, device, record, paths)
        successes.append(ok)
        records.append(rec)
    model.train(was_training)
    return np.concatenate(successes), records
