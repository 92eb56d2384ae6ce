"""The rollout against training, by construction: cw10_data.rollout driven by a policy whose output is known.

WindowPolicy has memorised one training window per re-planning step of each episode: at its r-th call it returns
the action window x0 of the window aligned with re-planning step r (time t0 = r A: observations o_{t0-O+1..t0},
actions a_{t0-O+1..t0-O+S}, the frames before 0 repeating frame 0), and it records the conditioning it is given.
With prediction "sample" and one DDIM step, diffusion.ddim_sample returns the network's output unchanged
(t = 0, alpha_bar_prev = 1, and the clip to [-1, 1] leaves actions in [-1, 1] alone), so the rollout's plan is
exactly that window. The tests then hold, for the policy at run time, the layout training uses
(cw10_data.WindowDataset): the observation window it sees at each re-plan is the training window of that episode
(oldest first, the first observation repeated at the start), and the actions sent to the environment are the
window's positions O-1 .. O+A-2, i.e. a_t0 .. a_{t0+A-1} (Diffusion Policy's receding horizon,
real-stanford/diffusion_policy). Replayed in the real environment, the expert's demonstration then succeeds
exactly where the expert did, and what the teacher's rollouts store in the replay pool are training windows.
"""
import dataclasses

import numpy as np
import pytest
import torch

import cw10_data
import diffusion
import replay
import train_cw10 as cw

CPU = torch.device("cpu")
SCHED = diffusion.Schedule(prediction="sample")  # with ddim_steps 1: the plan is the network's output (docstring)


class WindowPolicy(torch.nn.Module):
    """windows (N, R, S, 4) of episodes 0..N-1 at their R re-plans. A rollout of m episodes calls it R times; its
    r-th call returns windows[first:first + m, r], first = the episodes of the rollouts before (run_episodes' batches
    in order). Records every call's cond (m, O, 39)."""

    def __init__(self, windows: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.windows, self.conds, self.first = windows, [], 0

    def forward(self, x, t, cond):
        r = len(self.conds) % self.windows.shape[1]
        if r == 0 and self.conds:  # a new rollout: the next episodes
            self.first += self.conds[-1].shape[0]
        self.conds.append(cond.clone())
        return self.windows[self.first: self.first + x.shape[0], r].to(x.dtype) + 0 * self.w


class RecordingEnvs:
    """Wraps an EnvPool (or stands in for one, with scripted observations) and records the actions it is sent.

    Scripted: episode e is at observation obs[e, t] after t steps whatever the actions (open loop), obs (n, T+1, 39).
    """

    def __init__(self, envs=None, obs=None):
        self.envs, self.obs, self.sent = envs, obs, []

    def reset(self, task, seeds):
        self.sent, self.t = [], 0
        return self.envs.reset(task, seeds) if self.envs else self.obs[:, 0].copy()

    def step(self, actions, stop_on_success):
        self.sent.append(actions.copy())  # (n, J, 4)
        if self.envs:
            return self.envs.step(actions, stop_on_success)
        J = actions.shape[1]
        out = self.obs[:, self.t + 1: self.t + 1 + J].transpose(1, 0, 2)  # (J, n, 39)
        self.t += J
        return out.copy(), np.zeros(len(self.obs), bool)


def replan_windows(data: cw10_data.WindowDataset, n: int, T: int, A: int):
    """The training windows aligned with the rollout's re-planning steps t0 = 0, A, 2A, ... < T of episodes 0..n-1:
    x0 (n, R, S, 4), cond (n, R, O, 39). The window with cond o_{t0-O+1..t0} is WindowDataset's padded start t0."""
    starts = list(range(0, T, A))
    assert starts[-1] < data.per_episode  # every re-plan has its training window (a precondition of the setup)
    idx = torch.tensor([e * data.per_episode + t0 for e in range(n) for t0 in starts])
    x0, cond = data.get(idx)
    return x0.reshape(n, len(starts), *x0.shape[1:]), cond.reshape(n, len(starts), *cond.shape[1:])


def scripted(S, O, A, T, n=2, seed=0):
    """Random demonstrations (obs (n, T+1, 39), actions (n, T, 4) in [-1, 1]), their training windows and the
    bounds lo, hi that normalise_obs maps them with."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, T + 1, cw10_data.OBS_DIM)).astype(np.float32).astype(np.float64)
    actions = rng.uniform(-1, 1, (n, T, cw10_data.ACT_DIM)).astype(np.float32)
    lo, hi = -2 * np.ones(cw10_data.OBS_DIM, np.float32), 2 * np.ones(cw10_data.OBS_DIM, np.float32)
    norm = torch.from_numpy(cw10_data.normalise_obs(obs[:, :T].astype(np.float32), lo, hi).astype(np.float32))
    data = cw10_data.WindowDataset(norm, torch.from_numpy(actions), S, O, A)
    return obs, actions, data, lo, hi


def run_scripted(S, O, A, T, record):
    obs, actions, data, lo, hi = scripted(S, O, A, T)
    x0, cond = replan_windows(data, len(obs), T, A)
    cfg = cw.Config(horizon=S, obs_horizon=O, action_chunk=A, max_path_length=T, ddim_steps=1)
    policy, envs = WindowPolicy(x0), RecordingEnvs(obs=obs)
    ok, rec = cw10_data.rollout(policy, SCHED, envs, "hammer", [0, 1], cfg, lo, hi, torch.Generator().manual_seed(0),
                                CPU, record=record)
    return actions, x0, cond, policy, envs, rec


# (S, O, A, T): the paper's (8, 6, 2) and Table 5 layouts, T not a multiple of A in (8, 4, 4, 22) and (8, 8, 1, 13)
LAYOUTS = [(8, 6, 2, 20), (8, 8, 1, 13), (8, 4, 4, 22), (16, 8, 8, 40), (4, 1, 4, 10)]


@pytest.mark.parametrize("S,O,A,T", LAYOUTS)
def test_policy_is_conditioned_on_the_training_windows(S, O, A, T):
    """At every re-plan the policy sees the observation window training conditions on at that step: the last O
    observations oldest first, the first observation repeated before the episode start.
    Rejects: a history kept newest first; padding the start with zeros or the next observations; a history one step
    behind (updated before the last observation of a chunk) or not updated at all; observations not normalised."""
    _, _, cond, policy, _, _ = run_scripted(S, O, A, T, record=False)
    seen = torch.stack(policy.conds, 1)  # (n, R, O, 39)
    assert seen.shape == cond.shape
    torch.testing.assert_close(seen, cond, rtol=0, atol=1e-6)


@pytest.mark.parametrize("S,O,A,T", LAYOUTS)
def test_environment_gets_the_actions_the_training_window_aligns(S, O, A, T):
    """The actions sent to the environment at re-plan t0 are the plan's positions O-1 .. O+A-2, which the training
    window aligns with a_t0 .. a_{t0+A-1}: replaying the demonstration's windows sends exactly its actions, the last
    chunk cut at the episode's end.
    Rejects: executing actions[0:A] instead of [O-1:O-1+A] (a lag of O-1 steps); [O:O+A] (one step ahead);
    re-planning every step or every S steps; a last chunk not cut at T (stepping past the episode)."""
    actions, x0, _, _, envs, _ = run_scripted(S, O, A, T, record=False)
    for r, chunk in enumerate(envs.sent):  # (n, J, 4)
        assert np.array_equal(chunk, x0[:, r, O - 1: O - 1 + chunk.shape[1]].numpy().astype(np.float64))
    sent = np.concatenate(envs.sent, axis=1)
    assert sent.shape == actions.shape and np.array_equal(sent.astype(np.float32), actions)


@pytest.mark.parametrize("S,O,A,T", LAYOUTS[:3])
def test_recorded_windows_are_training_windows(S, O, A, T):
    """rollout(record=True), the teacher's rollouts that fill the replay pool, returns per re-plan the observation
    window the policy was given and the action sequence it sampled, which here are the training windows.
    Rejects: recording the history after the chunk was executed (the next window's cond paired with this plan),
    recording newest first, or cond and plan of different re-plans."""
    _, x0, cond, policy, _, (rec_cond, rec_x0) = run_scripted(S, O, A, T, record=True)
    assert torch.equal(rec_x0, x0)  # the plan is the policy's output (one DDIM step, sample prediction)
    torch.testing.assert_close(rec_cond, cond, rtol=0, atol=1e-6)
    assert torch.equal(rec_cond, torch.stack(policy.conds, 1))


def test_expert_demonstration_replayed_by_the_rollout_succeeds_as_the_expert_did(tmp_path):
    """The real environment and the real scripted expert: demonstrations collected through the demo cache
    (handle-press-side, 44 steps: the expert succeeds on some episodes and not on others), turned into training
    windows by task_dataset, replayed through rollout with the episodes' own seeds. Evaluation mode (stop on success)
    gives exactly the expert's successes; record mode sends exactly the expert's actions and conditions the policy
    on exactly the training windows.
    Rejects: executing actions[0:A] instead of [O-1:O-1+A]; a history kept newest first; episodes reset with other
    seeds than the ones asked for; a rollout that stops an episode before T without success."""
    task, T = "handle-press-side", 44
    cfg = dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), tasks=task, max_path_length=T, demos_per_task=4,
                              demo_keep="all", data_dir=str(tmp_path), prediction="sample", ddim_steps=1,
                              rollout_batch=4)
    cw10_data.ensure_demos(cfg, [task])
    d = cw10_data.load_demos(cfg, task)
    assert 0 < d["success"].sum() < len(d["success"])  # the expert both succeeds and fails: the test can tell
    lo, hi = cw10_data.obs_bounds(cw10_data.make_env(task, T))
    data = cw10_data.task_dataset(cfg, task, lo, hi, CPU)
    x0, cond = replan_windows(data, len(d["seeds"]), T, cfg.action_chunk)
    pool = cw10_data.EnvPool(0, T)
    for record in (False, True):
        policy, envs = WindowPolicy(x0), RecordingEnvs(envs=pool)
        ok, rec = cw10_data.rollout(policy, SCHED, envs, task, d["seeds"], cfg, lo, hi,
                                    torch.Generator().manual_seed(0), CPU, record=record)
        assert np.array_equal(ok, d["success"])
        sent = np.concatenate(envs.sent, axis=1)
        assert np.array_equal(sent.astype(np.float32), d["actions"][:, : sent.shape[1]])
    assert sent.shape[1] == T
    torch.testing.assert_close(torch.stack(policy.conds, 1), cond, rtol=0, atol=1e-5)
    torch.testing.assert_close(rec[0], cond, rtol=0, atol=1e-5)
    assert torch.equal(rec[1], x0)


class PoolFilled(Exception):
    pass


def test_replay_pool_stores_training_windows_of_the_teachers_episodes(tmp_path, monkeypatch):
    """train_cw10's replay recording at the end of Task 1: the frozen teacher (here WindowPolicy replaying the
    expert on the replay episodes) is rolled out on the task's replay seeds, and every (x0, cond) pair the pool
    receives is a training window of that episode, at evenly spaced re-plans from the first (start padding) to the
    last.
    Rejects: cond and x0 taken at different re-plans or flattened in different orders (pairs broken); the
    teacher rolled out on other episodes (the evaluation or demonstration seeds, or the same seeds in every batch of
    rollouts); windows of one episode stored under another's actions."""
    task = "handle-press-side"
    flags = dict(tasks=f"{task},window-close", data_dir=str(tmp_path), method="replay", prediction="sample",
                 ddim_steps=1, curve="off", path_episodes=0, eval_episodes=1, steps_per_task=2,
                 replay_rollouts=4)  # two batches of the smoke preset's rollout_batch 2
    cfg = dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), **flags)
    T, A = cfg.max_path_length, cfg.action_chunk
    seeds = cw10_data.episode_seeds(cw10_data.EPISODES_REPLAY, cfg.seed, task, 0, cfg.replay_rollouts)
    obs, actions, _ = cw10_data.collect_episodes(task, seeds, T)
    lo, hi = cw10_data.obs_bounds(cw10_data.make_env(task, T))
    norm = torch.from_numpy(cw10_data.normalise_obs(obs, lo, hi).astype(np.float32))
    data = cw10_data.WindowDataset(norm, torch.from_numpy(actions), cfg.horizon, cfg.obs_horizon, A)
    x0, cond = replan_windows(data, len(seeds), T, A)  # (n, R, ...)
    added = []

    def add(pool, task_id, x0, cond):
        added.append((task_id, x0, cond))
        raise PoolFilled

    monkeypatch.setattr(replay, "frozen_copy", lambda model: WindowPolicy(x0))
    monkeypatch.setattr(replay.ReplayPool, "add", add)
    argv = ["--preset", "smoke", "--threads", "1", "--out", str(tmp_path / "run")]
    with pytest.raises(PoolFilled):
        cw.main(argv + [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()])
    (task_id, got_x0, got_cond), = added
    n, R = x0.shape[:2]
    K = min(cfg.replay_windows, R)
    assert task_id == 0 and got_x0.shape == (n * K, *x0.shape[2:]) and got_cond.shape == (n * K, *cond.shape[2:])
    replans = []
    for i in range(n * K):
        e = i // K  # episode-major, as the rollout returns them
        r = [r for r in range(R) if torch.equal(x0[e, r], got_x0[i])
             and torch.allclose(got_cond[i], cond[e, r], rtol=0, atol=1e-5)]
        assert r, f"stored pair {i} is no training window of episode {e}"
        replans.append(r[0])
    assert replans[:K] == sorted(set(replans[:K])) and replans[0] == 0 and replans[K - 1] == R - 1
    assert replans == replans[:K] * n
