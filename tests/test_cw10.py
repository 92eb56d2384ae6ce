"""Tests of train_cw10.py: windows, normalisation bounds, demo cache, batched rollouts, bad input, smoke runs of
all six methods, and exact resume after SIGKILL (CPU, fixed seed)."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_cw10 as cw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--preset", "smoke", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Smoke demos collected once for the module (2 tasks x 3 short episodes, serial)."""
    d = str(tmp_path_factory.mktemp("cw10_data"))
    cfg = dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=d)
    cw.ensure_demos(cfg, cw.task_list(cfg))
    return d


@pytest.fixture(scope="module")
def smoke_run(data_dir, tmp_path_factory):
    """method -> folder of a finished smoke run (each method runs once per module)."""
    done = {}

    def run(method):
        if method not in done:
            out = tmp_path_factory.mktemp("cw10_runs") / method
            cw.main(SMOKE + ["--method", method, "--out", str(out), "--data-dir", data_dir])
            done[method] = out
        return done[method]

    return run


def smoke_cfg(data_dir, **kw):
    return dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=data_dir, **kw)

# ---------------------------------------------------------------------------------------------------------------
# windows and normalisation


@pytest.mark.parametrize("S,O,A", [(8, 6, 2), (8, 8, 1), (8, 4, 4), (16, 8, 8), (4, 1, 4)])
def test_windows_match_plain_loop(S, O, A):
    """Every window equals the plain definition: frames s..s+S-1 with s in [-(O-1), T-S+A-1], edges repeated."""
    N, T = 2, 11
    obs = torch.arange(N * T * 3, dtype=torch.float32).reshape(N, T, 3)
    act = -torch.arange(N * T * 2, dtype=torch.float32).reshape(N, T, 2)
    data = cw.WindowDataset(obs, act, S, O, A)
    assert len(data) == N * (T - S + A + O - 1)
    expected_x, expected_c = [], []
    for e in range(N):
        for s in range(-(O - 1), T - S + A):
            frames = [min(max(t, 0), T - 1) for t in range(s, s + S)]
            expected_x.append(act[e, frames])
            expected_c.append(obs[e, frames[:O]])
            # the executed actions O-1 .. O+A-2 are real actions or the repeated last one, never padding at the start
            assert s + O - 1 >= 0
    x0, cond = data.get(torch.arange(len(data)))
    assert torch.equal(x0, torch.stack(expected_x)) and torch.equal(cond, torch.stack(expected_c))
    assert x0.shape[1:] == (S, 2) and cond.shape[1:] == (O, 3)


def test_obs_bounds_fixed_and_task_independent(data_dir):
    lo1, hi1 = cw.obs_bounds(cw.make_env("hammer", 50))
    lo2, hi2 = cw.obs_bounds(cw.make_env("push-wall", 50))
    assert lo1.shape == (39,) and np.all(np.isfinite(lo1)) and np.all(hi1 > lo1)
    assert np.array_equal(lo1, lo2) and np.array_equal(hi1, hi2)  # no task-specific (let alone later-task) data
    obs = cw.load_demos(smoke_cfg(data_dir), "push-wall")["obs"]  # one object: obs[11:18] is zero padding
    z = cw.normalise_obs(obs, lo1, hi1)
    assert np.abs(z).max() <= 1.0 + 1e-6  # the workspace bounds cover the visited states up to a small margin

# ---------------------------------------------------------------------------------------------------------------
# demonstrations and rollouts


def test_demo_cache_is_reused_and_deterministic(data_dir):
    cfg = smoke_cfg(data_dir)
    path = cw.demo_path(cfg, "hammer")
    mtime = os.path.getmtime(path)
    cw.ensure_demos(cfg, ["hammer"])
    assert os.path.getmtime(path) == mtime  # second run reuses the cache
    d = cw.load_demos(cfg, "hammer")
    assert d["seeds"].shape == (3,) and np.abs(d["actions"]).max() <= 1.0
    obs, act, _ = cw.collect_episodes("hammer", d["seeds"][:1], cfg.max_path_length)
    assert np.array_equal(obs, d["obs"][:1]) and np.array_equal(act, d["actions"][:1])  # the seed reproduces it
    assert len(set(map(tuple, d["obs"][:, 0, 4:7]))) == 3  # a fresh object position at every reset


class CountingPolicy(torch.nn.Module):
    """Stand-in denoiser that records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, cond):
        self.calls.append((x.shape[0], cond.shape))
        return x * 0 + self.w


def test_rollout_one_policy_call_per_replan_for_all_episodes():
    cfg = cw.Config(**cw.PRESETS["smoke"])
    n, policy = 3, CountingPolicy()
    envs = [cw.make_env("hammer", cfg.max_path_length) for _ in range(n)]
    lo, hi = cw.obs_bounds(envs[0])
    ok, (cond, x0) = cw.rollout(policy, cw.diffusion.Schedule(), envs, [1, 2, 3], cfg, lo, hi,
                               torch.Generator().manual_seed(0), torch.device("cpu"), record=True)
    replans = -(-cfg.max_path_length // cfg.action_chunk)
    assert len(policy.calls) == replans * cfg.ddim_steps  # one batched call per DDIM step per re-plan
    assert all(b == n for b, _ in policy.calls)
    assert ok.shape == (n,) and cond.shape == (n, replans, cfg.obs_horizon, 39) and x0.shape == (n, replans, 8, 4)
    assert torch.equal(cond[:, 0, 0], cond[:, 0, -1])  # the first observation repeated at reset

# ---------------------------------------------------------------------------------------------------------------
# configuration and bad input


def test_every_config_field_has_a_flag_and_table4_defaults():
    cfg = cw.Config()
    assert (cfg.batch_size, cfg.lr, cfg.steps_per_task, cfg.fisher_samples, cfg.lam, cfg.replay_rollouts,
            cfg.replay_ratio, cfg.inner_lr) == (256, 2e-4, 50_000, 20_000, 12.0, 2500, 1.0, 1e-4)
    assert (cfg.horizon, cfg.obs_horizon, cfg.action_chunk, cfg.ddim_steps) == (8, 6, 2, 50)
    args = cw.build_parser().parse_args(["--preset", "small", "--lam", "3", "--curve-all-tasks", "true"])
    resolved = cw.config_from_args(args)
    assert resolved.lam == 3.0 and resolved.curve_all_tasks and resolved.model == "small"
    for f in dataclasses.fields(cw.Config):
        assert "--" + f.name.replace("_", "-") in cw.build_parser().format_help()


@pytest.mark.parametrize("flags,message", [
    (["--method", "sgd"], "unknown method"),
    (["--tasks", "hammer,fly"], "unknown task"),
    (["--horizon", "6"], "multiple of 4"),
    (["--obs-horizon", "6", "--action-chunk", "4"], "O + A"),
    (["--obs-horizon", "0"], ">= 1"),
    (["--method", "ftml", "--batch-size", "7"], "support and query"),
    (["--lam", "-1"], "lam"),
])
def test_bad_input_one_line_exit_2(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cw.main(SMOKE + ["--out", str(out), "--data-dir", str(tmp_path / "d")] + flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_unwritable_out_and_corrupt_cache(tmp_path, capsys, data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        cw.main(SMOKE + ["--out", str(blocker / "run"), "--data-dir", data_dir])
    assert e.value.code == 2 and "cannot write" in capsys.readouterr().err
    bad = tmp_path / "bad_data"
    bad.mkdir()
    cfg = smoke_cfg(str(bad))
    for task in cw.task_list(cfg):
        (bad / os.path.basename(cw.demo_path(cfg, task))).write_bytes(b"not a zip file")
    out = tmp_path / "run2"
    with pytest.raises(SystemExit) as e:
        cw.main(SMOKE + ["--out", str(out), "--data-dir", str(bad)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "corrupt demo cache" in err and err.count("\n") == 1 and not out.exists()

# ---------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("method", cw.meta_baselines.METHODS)
def test_smoke_every_method(method, smoke_run):
    out = smoke_run(method)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["n_tasks_trained"] == 2
    assert len(summary["R"]) == 2 and summary["R"][1][1] is not None and summary["transitions"] == [8]
    assert [g for g, _ in summary["task1_curve"]] == [2, 4, 6, 8, 10, 12, 14, 16]  # eval schedule, both tasks
    assert (out / "figure2.png").stat().st_size > 0 and (out / "checkpoint.pt").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} >= {"train", "curve", "eval"}
    if cw.meta_baselines.uses_fisher(method):
        assert any(r["kind"] == "fisher" for r in records)
    if cw.meta_baselines.uses_replay(method):
        assert any(r["kind"] == "replay" for r in records)
    assert json.loads((out / "config.json").read_text())["method"] == method


def test_sigkill_resume_reproduces_uninterrupted_run(data_dir, smoke_run, tmp_path):
    """Kill a smoke run mid-task 2 with SIGKILL, rerun the same command: summary.json equals an uninterrupted run."""
    flags = SMOKE + ["--method", "tr", "--data-dir", data_dir]
    clean = smoke_run("tr")
    killed = tmp_path / "killed"
    cmd = [sys.executable, os.path.join(ROOT, "train_cw10.py")] + flags + ["--out", str(killed)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = killed / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait until task 2 passed its step-3 checkpoint
        if log.exists() and any(json.loads(line).get("global_step", 0) >= 12 for line in log.read_text().splitlines()
                                if line.endswith("}")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists() or json.loads((killed / "summary.json").read_text())[
        "n_tasks_trained"] == 1
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert json.loads((killed / "summary.json").read_text()) == json.loads((clean / "summary.json").read_text())
    strip = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    assert strip(killed / "metrics.jsonl") == strip(clean / "metrics.jsonl")


@pytest.mark.slow
def test_grid_writes_table5(data_dir, tmp_path):
    out = tmp_path / "grid"
    cw.main(SMOKE + ["--grid", "8,6,2;8,4,4", "--tasks", "hammer", "--out", str(out), "--data-dir", data_dir])
    text = (out / "table5.md").read_text()
    assert "S8_O6_A2" in text and "S8_O4_A4" in text and "0.859" in text


@pytest.mark.slow
def test_bench_prints_table(capsys):
    cw.main(SMOKE + ["--bench", "--bench-steps", "1", "--bench-presets", "smoke"])
    assert "batched / serial speed-up" in capsys.readouterr().out
