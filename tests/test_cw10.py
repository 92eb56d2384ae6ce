"""Tests of train_cw10.py: windows, normalisation bounds, demo cache, batched rollouts, bad input, smoke runs of
all six methods, and exact resume after SIGKILL (CPU, fixed seed)."""
import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import cw10_data
import train_cw10 as cw
from conftest import adam_steps, default_sigint, holds_weight_average, record_schedules, result, stop_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--preset", "smoke", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Smoke demos collected once for the module (2 tasks x 3 short episodes, serial)."""
    d = str(tmp_path_factory.mktemp("cw10_data"))
    cfg = dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=d)
    cw10_data.ensure_demos(cfg, cw.task_list(cfg))
    return d


def run_script(out, data_dir, *flags, wait=True):
    """train_cw10.py in a subprocess (as a user runs it), one torch thread."""
    cmd = [sys.executable, os.path.join(ROOT, "train_cw10.py"), *SMOKE, "--out", str(out), "--data-dir", data_dir,
           *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke_run(data_dir, tmp_path_factory):
    """method -> folder of a finished smoke run (each method runs once per module)."""
    done = {}

    def run(method):
        if method not in done:
            out = tmp_path_factory.mktemp("cw10_runs") / method
            proc = run_script(out, data_dir, "--method", method)
            assert proc.returncode == 0, proc.stderr[-2000:]
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
    data = cw10_data.WindowDataset(obs, act, S, O, A)
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
    lo1, hi1 = cw10_data.obs_bounds(cw10_data.make_env("hammer", 50))
    lo2, hi2 = cw10_data.obs_bounds(cw10_data.make_env("push-wall", 50))
    assert lo1.shape == (39,) and np.all(np.isfinite(lo1)) and np.all(hi1 > lo1)
    assert np.array_equal(lo1, lo2) and np.array_equal(hi1, hi2)  # no task-specific (let alone later-task) data
    obs = cw10_data.load_demos(smoke_cfg(data_dir), "push-wall")["obs"]  # one object: obs[11:18] is zero padding
    z = cw10_data.normalise_obs(obs, lo1, hi1)
    assert np.abs(z).max() <= 1.0 + 1e-6  # the workspace bounds cover the visited states up to a small margin

# ---------------------------------------------------------------------------------------------------------------
# demonstrations and rollouts


def test_demo_cache_is_reused_and_deterministic(data_dir):
    cfg = smoke_cfg(data_dir)
    path = cw10_data.demo_path(cfg, "hammer")
    mtime = os.path.getmtime(path)
    cw10_data.ensure_demos(cfg, ["hammer"])
    assert os.path.getmtime(path) == mtime  # second run reuses the cache
    d = cw10_data.load_demos(cfg, "hammer")
    assert d["seeds"].shape == (3,) and np.abs(d["actions"]).max() <= 1.0
    obs, act, _ = cw10_data.collect_episodes("hammer", d["seeds"][:1], cfg.max_path_length)
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
    envs = cw10_data.EnvPool(0, cfg.max_path_length)
    lo, hi = cw10_data.obs_bounds(cw10_data.make_env("hammer", cfg.max_path_length))
    ok, (cond, x0) = cw10_data.rollout(policy, cw.diffusion.Schedule(), envs, "hammer", [1, 2, 3], cfg, lo, hi,
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
    resolved, _ = cw.experiment.parse_config(cw.Config, cw.PRESETS, ["--preset", "small", "--lam", "3",
                                                                     "--curve-all-tasks"], "", cw.CHOICES)
    assert resolved.lam == 3.0 and resolved.curve_all_tasks and resolved.model == "small"
    text = cw.experiment.build_parser(cw.Config, cw.PRESETS, "", cw.CHOICES).format_help()
    for f in dataclasses.fields(cw.Config):
        assert "--" + f.name.replace("_", "-") in text
    assert "Table 4, EWC lambda (default: 12.0)" in " ".join(text.split())  # help = the field's comment, once


# ---------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("method", cw.learners.METHODS)
def test_smoke_every_method(method, smoke_run):
    out = smoke_run(method)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["n_tasks_trained"] == 2
    assert len(summary["R"]) == 2 and summary["R"][1][1] is not None and summary["transitions"] == [8]
    assert [g for g, _ in summary["task1_curve"]] == [2, 4, 6, 8, 10, 12, 14, 16]  # eval schedule, both tasks
    assert (out / "figure2.png").stat().st_size > 0 and (out / "checkpoint.pt").exists()
    assert "R[i][j]" in (out / "summary.md").read_text()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} >= {"train", "curve", "eval"}
    if cw.learners.uses_fisher(method):
        assert any(r["kind"] == "fisher" for r in records)
    if cw.learners.uses_replay(method):
        assert any(r["kind"] == "replay" for r in records)
    assert json.loads((out / "config.json").read_text())["method"] == method


def test_task1_paths_are_task1s_fixed_evaluation_episodes(data_dir, smoke_run, tmp_path):
    """task1_paths.npz holds, after each task, Task 1's first evaluation episodes: each starts at the reset of the
    fixed evaluation seeds (the same hand, object and goal in every column), and their success is R's first column
    (the smoke preset draws all its 2 evaluation episodes). --compare puts runs in rows.
    Catches: paths recorded from the last task evaluated instead of Task 1, episodes of other seeds (replay's, or
    new ones per boundary), object and goal columns taken from the wrong observation slots."""
    out = smoke_run("tr")
    summary = json.loads((out / "summary.json").read_text())
    cfg = smoke_cfg(data_dir)
    with np.load(out / "task1_paths.npz") as z:
        xyz, success, tasks = z["xyz"], z["success"], list(z["tasks"])
    assert xyz.shape == (2, cfg.path_episodes, cfg.max_path_length + 1, 9) and tasks == ["hammer", "push-wall"]
    seeds = cw10_data.episode_seeds(cw10_data.EPISODES_EVAL, 0, "hammer", 0, cfg.path_episodes)
    env = cw10_data.make_env("hammer", cfg.max_path_length)
    for e, s in enumerate(seeds):
        obs = cw10_data.reset_env(env, int(s))
        first = np.concatenate([obs[0:3], obs[4:7], obs[36:39]])
        for k in range(2):
            np.testing.assert_allclose(xyz[k, e, 0], first, rtol=0, atol=1e-6)
    assert [float(s.mean()) for s in success] == [row[0] for row in summary["R"]]
    assert (out / "task1_paths.png").stat().st_size > 0
    png = tmp_path / "cmp.png"
    cw.main(["--compare", str(out), str(smoke_run("replay")), "--out", str(png)])
    assert png.stat().st_size > 0


@pytest.mark.parametrize("method", ["tr", "vrmcl"])
def test_smoke_predicting_x0(method, data_dir, tmp_path, monkeypatch):
    """--prediction sample, in process, for tr (Fisher, distillation of teacher rollouts) and vrmcl (plain generative
    replay, support/query; all six methods share these learners and run with x0 in tests/test_toy.py): both tasks
    run, and every schedule the run builds (training, Fisher, replay rollouts, evaluation) carries the x0 form.
    Catches: a script that parses the flag but builds its diffusion.Schedule without it, so the run trains and
    samples epsilon while its config says sample."""
    made = record_schedules(monkeypatch)
    cw.main(["--preset", "smoke", "--out", str(tmp_path / "run"), "--data-dir", data_dir, "--method", method,
             "--prediction", "sample"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_tasks_trained"] == 2 and summary["R"][1][1] is not None
    assert made and set(made) == {"sample"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prediction"] == "sample"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_stopped_run_resumes_to_the_uninterrupted_result(sig, data_dir, smoke_run, tmp_path):
    """Stop a smoke run in task 2 (kill -9, or Ctrl-C: one line, exit 130), rerun the same command: summary.json
    and metrics.jsonl equal an uninterrupted run's."""
    clean = smoke_run("tr")
    stopped = tmp_path / "stopped"
    proc = run_script(stopped, data_dir, "--method", "tr", wait=False)
    err = stop_at(proc, stopped / "metrics.jsonl", 12, sig)  # task 2, after its step-3 checkpoint
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("interrupted at task 2, step"), err
        assert "rerun the same command to resume" in err
    done = run_script(stopped, data_dir, "--method", "tr")
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert result(stopped / "summary.json") == result(clean / "summary.json")
    assert (stopped / "metrics.jsonl").read_text() == (clean / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_grid_writes_table5(data_dir, tmp_path):
    proc = run_script(tmp_path / "grid", data_dir, "--grid", "S8_O6_A2,S8_O4_A4", "--tasks", "hammer")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "grid" / "table5.md").read_text()
    assert "S8_O6_A2" in text and "S8_O4_A4" in text and "0.859" in text


@pytest.mark.slow
def test_bench_prints_rollouts_and_demos(data_dir, tmp_path):
    proc = run_script(tmp_path / "b", data_dir, "--bench")
    assert proc.returncode == 0 and "one at a time" in proc.stdout and "episodes/s" in proc.stdout


def test_sequence_name_says_when_a_run_is_a_subsequence():
    """The small preset runs CW10's tasks 6-10; its summary and output must say so. Catches a name
    computed from positions in the run instead of in CW10, or the whole sequence called a subsequence."""
    assert cw.sequence_name(list(cw10_data.CW10)) == "CW10"
    assert cw.task_list(cw.Config(**cw.PRESETS["medium"])) == list(cw10_data.CW10)  # the CPU run of the whole CW10
    small = cw.task_list(cw.Config(**cw.PRESETS["small"]))
    assert small == list(cw10_data.CW10[5:]) and cw.sequence_name(small) == "subsequence of CW10: tasks 6-10"
    assert cw.sequence_name(["hammer", "push"]) == "subsequence of CW10: tasks 1,7"
    assert cw.sequence_name(["push"]) == "subsequence of CW10: task 7"


class DemosStarted(Exception):
    pass


def test_paper_config_on_a_cpu_says_how_long_before_collecting_demos(tmp_path, monkeypatch, capsys):
    """`python train_cw10.py --method tr` on a CPU: one line with the measured step time, the hours the paper's
    500,000 steps take at that rate and the preset that runs in under an hour, printed before any demonstration is
    collected (the bench is replaced by a 2 s step here; the real one takes a minute). Catches: the estimate
    printed after demo collection, steps counted per task instead of over the sequence."""
    calls = []

    def bench(**kw):
        calls.append(kw)
        return {kw["rows"][0]: [2.0]}

    def demos(*args):
        raise DemosStarted

    monkeypatch.setattr(cw.bench, "step_times", bench)
    monkeypatch.setattr(cw10_data, "ensure_demos", demos)
    with pytest.raises(DemosStarted):
        cw.main(["--method", "tr", "--device", "cpu", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert calls[0]["model_name"] == "unet1d_paper" and calls[0]["batch_size"] == 256 and calls[0]["rows"] == ("tr",)
    assert "2.0 s per tr step" in line and "500,000 steps need about 278 hours" in line and "--preset medium" in line


def test_a_longer_first_task(data_dir, tmp_path):
    """--first-task-steps: Task 1 takes its own number of updates, with its own cosine schedule and the curve points
    it reaches (a --curve list may name steps past the end of the shorter later tasks, which they skip).
    Catches: later tasks given Task 1's length, or Task 1's curve cut at steps_per_task."""
    proc = run_script(tmp_path / "run", data_dir, "--method", "finetune", "--first-task-steps", "12", "--curve",
                      "4,8,12", "--lr-schedule", "cosine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["transitions"] == [12]
    assert [g for g, _ in summary["task1_curve"]] == [4, 8, 12, 16, 20]


def test_the_task_end_is_always_a_curve_point(data_dir, tmp_path):
    """A --curve list that does not name a task's last step still records the boundary evaluation on the curve, so
    Table 2's reference (metrics.reference: the last curve point in Task 1) is Task 1's end, R[0][0].
    Catches: the reference taken from a mid-task point (the medium preset's curve 50,250 once made every CW10
    Table 2 cell n/a: hammer was 0.00 at step 250 and 0.90 at its end)."""
    proc = run_script(tmp_path / "run", data_dir, "--method", "finetune", "--first-task-steps", "12", "--curve", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [g for g, _ in summary["task1_curve"]] == [4, 12, 16, 20]
    assert dict(summary["task1_curve"])[12] == summary["R"][0][0]


@pytest.mark.parametrize("method", ["finetune", "vrmcl"])
def test_adam_restarts_at_each_task_boundary(data_dir, tmp_path, method):
    """--reset-optimizer (the default) clears Adam's moments at the boundary: after two tasks of 8 steps the
    checkpoint's Adam has taken 8 steps, not 16, in every parameter; --no-reset-optimizer carries them over.
    Catches a loop that never resets, resets only some learners, or resets after the next task began."""
    steps = {}
    for flag in ("--reset-optimizer", "--no-reset-optimizer"):
        out = tmp_path / flag
        proc = run_script(out, data_dir, "--method", method, flag)
        assert proc.returncode == 0, proc.stderr[-2000:]
        steps[flag] = adam_steps(out / "checkpoint.pt", method)
    assert steps == {"--reset-optimizer": {8.0}, "--no-reset-optimizer": {16.0}}


def test_cosine_lr_schedule_drives_the_optimizer(data_dir, tmp_path):
    """--lr-schedule cosine sets Adam's lr from experiment.lr_at at every step: the checkpoint at the end of the
    last task holds the lr of its last step (a loop that never sets it keeps --lr; one that uses the global step
    instead of the in-task step gets another value)."""
    proc = run_script(tmp_path / "cos", data_dir, "--lr-schedule", "cosine", "--lr-warmup", "3", "--lr", "1e-3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = torch.load(tmp_path / "cos" / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = smoke_cfg(data_dir, lr=1e-3, lr_schedule="cosine", lr_warmup=3)
    last = cfg.steps_per_task - 1
    lrs = [g["lr"] for g in ck["learner"]["opt"]["param_groups"]]  # the default method, tr
    assert lrs == [pytest.approx(cw.experiment.lr_at(cfg, last, cfg.steps_per_task), rel=1e-12)] * len(lrs)
    assert cw.experiment.lr_at(cfg, last, cfg.steps_per_task) < 1e-3 * 0.1


def test_weight_average_is_evaluated_and_kept_at_each_task_end(data_dir, tmp_path):
    """--ema 0.5: the run ends with the model holding the weight average of all its steps (kept at each task's end
    by experiment.end_task). Fails if the loop never adopts the average or averages fewer steps."""
    proc = run_script(tmp_path / "run", data_dir, "--method", "replay", "--ema", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["learner"]["n"] == 16  # 2 tasks x 8 steps
    assert holds_weight_average(ckpt, cw.build_model(cw.Config(**ckpt["config"]), "cpu"))
