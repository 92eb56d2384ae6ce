"""train_toy.py: the paper's protocol on 2-D point clouds, end to end through subprocess in seconds, and its pieces.

The smoke run (6 methods x 1 seed, 2 tasks of 12 steps) is shared by the end-to-end tests. Each test names in its
docstring a plausible wrong implementation it rejects.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import experiment
import metrics
import runfiles
import train_toy
from conftest import adam_steps, record_schedules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy(*args, timeout=120):
    return subprocess.run([sys.executable, "train_toy.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(out folder, run folders) of `python train_toy.py --preset smoke`: every method, one seed."""
    out = tmp_path_factory.mktemp("toy") / "smoke"
    result = toy("--preset", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, [out / f"{m}-s0" for m in train_toy.LONGEST_FIRST]

# ----------------------------------------------------------------------------------------------------------------
# end to end (subprocess)


def test_smoke_writes_every_output(smoke):
    """Every run folder and every table and figure exists, Table 1 has a row per method: catches a method
    silently skipped by the process pool, or an aggregation that forgets the sliced-Wasserstein copy."""
    out, runs = smoke
    for run in runs:
        for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "samples.npz",
                     "sw/summary.json"):
            assert (run / name).is_file(), run / name
    for name in ("table1.md", "table2.md", "figure2_toy.png", "samples.png", "sw/table1.md", "sw/table2.md",
                 "sw/figure2_toy.png"):
        assert (out / name).is_file(), name
    table1 = (out / "table1.md").read_text()
    assert all(f"| {metrics.DISPLAY_NAMES[m]} |" in table1 for m in train_toy.LONGEST_FIRST), table1


def test_summary_is_build_summary_of_the_logged_evaluations(smoke):
    """Table 2 and Figure 2 come from the run's own evaluations through metrics.py: metrics.build_summary on the
    raw records of metrics.jsonl (eval rows -> R, curve points -> Task-1 curve, task starts -> transitions)
    rebuilds summary.json exactly, for FD and for SW. Catches a toy-side copy of the re-convergence rule or of
    Table 1, a curve that is not the logged one, or transitions off by one task."""
    _, runs = smoke
    for run in runs:
        records = runfiles.read_jsonl(run / "metrics.jsonl")
        evals = [r for r in records if r["kind"] == "eval"]
        for score, path in (("fd", run / "summary.json"), ("sw", run / "sw" / "summary.json")):
            saved = json.loads(path.read_text())
            curve = [(r["global_step"], r["in_task_step"], r["task"], r[score])
                     for r in records if r["kind"] == "curve"]
            rebuilt = metrics.build_summary(saved["method"], saved["seed"], "toy", saved["task_names"],
                                            [r[score] for r in evals], False, curve,
                                            [r["global_step"] for r in evals[:-1]], metrics.FID_THRESHOLDS,
                                            extra=saved["extra"], provenance=saved["provenance"])
            assert json.loads(json.dumps(rebuilt)) == saved, (run, score)


def test_tables_and_figure_are_metrics_aggregate_of_the_runs(smoke, tmp_path):
    """table1.md and table2.md are byte-identical to metrics.aggregate over the run folders, which also draws
    Figure 2: catches tables written or formatted by the toy itself, or runs left out of the aggregation."""
    out, runs = smoke
    written = metrics.aggregate([str(r) for r in runs], str(tmp_path))
    assert str(tmp_path / "figure2_toy.png") in written
    for name in ("table1.md", "table2.md"):
        assert (tmp_path / name).read_text() == (out / name).read_text(), name


def test_runs_record_what_made_them(smoke):
    """config.json and summary.json name the commit (this checkout's HEAD), whether tracked files had changed, the
    package versions, device, threads, host and times, and Table 1 names the commits it mixes: catches a
    provenance taken from another repository, a wall time that leaves out training or evaluation, or a table that
    hides which code made its rows."""
    out, runs = smoke
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for run in runs:
        starts = json.loads((run / "config.json").read_text())["provenance"]
        made = json.loads((run / "summary.json").read_text())["provenance"]
        assert made["starts"] == starts and len(starts) == 1
        p = starts[0]
        if head:  # a git checkout (the planted-bug check runs in a copy without .git: no commit to name)
            assert p["commit"] == head and isinstance(p["dirty"], bool)
        else:
            assert p["commit"] is None and p["dirty"] is None
        assert p["device"] == "cpu" and p["threads"] >= 1
        assert p["versions"]["torch"] == torch.__version__ and p["versions"]["numpy"] == np.__version__
        assert p["host"] and p["started"] <= made["ended"]
        assert made["wall_s"] + 0.002 >= made["train_s"] + made["eval_s"] and made["train_s"] > 0 and made["eval_s"] > 0
    assert f"Made at commit {head[:7] or 'unrecorded'}" in (out / "table1.md").read_text()


def test_rerun_resumes_and_changes_nothing(smoke):
    """Rerunning the same command finds every run finished: no record is logged twice and the tables are the
    same. Catches a resume that retrains a finished task or a run folder keyed by something else than the run."""
    out, runs = smoke
    before = {p: p.read_text() for p in [out / "table1.md", out / "table2.md"] + [r / "metrics.jsonl" for r in runs]}
    train_toy.main(["--preset", "smoke", "--out", str(out), "--workers", "1"])  # in-process: no second torch import
    assert {p: p.read_text() for p in before} == before


@pytest.mark.parametrize("args, message", [
    (["--method", "sgd"], "--method 'sgd'"),
    (["--method", "tr,tr"], "names a method twice"),
    (["--num-tasks", "6"], "--num-tasks must be <= 5"),
    (["--method", "ftml", "--batch-size", "15"], "support and query halves"),
    (["--seeds", "0"], "--seeds must be > 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    """Bad flags end in one 'error:' line and exit code 2 before anything is written: catches a traceback, or a
    run folder created for a configuration that cannot run."""
    with pytest.raises(SystemExit) as e:
        experiment.run(train_toy.main, ["--preset", "smoke", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()

# ----------------------------------------------------------------------------------------------------------------
# pieces


def test_sliced_wasserstein_closed_forms():
    """SW_2^2(a, a) = 0 for any order of the points, and SW_2^2(a, a + v) = |v|^2 / 2 exactly (the mean of
    cos^2 over evenly spaced angles). Catches a missing sort (a permuted copy would score > 0), SW_2 instead of
    SW_2^2 (no square), or a sum over directions instead of the mean."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 2, generator=g)
    v = torch.tensor([3.0, -4.0])
    assert train_toy.sliced_wasserstein(a, a[torch.randperm(200, generator=g)]) == pytest.approx(0.0, abs=1e-12)
    assert train_toy.sliced_wasserstein(a, a + v) == pytest.approx(25.0 / 2, rel=1e-9)


def test_point_clouds_stay_inside_the_sampler_range_and_apart():
    """Every point lies inside the canvas, so x / SCALE is inside DDIM's clip range [-1, 1], and every two class
    means are >= 20 canvas units apart. Catches a layout that puts a class where x0_hat is clipped, or two
    classes on top of each other (a forgotten class could then score as learned)."""
    cfg = train_toy.Config(classes_per_task=4)
    for split in (0, 1):
        points = train_toy.make_points(cfg, 500, split)
        assert points.x.abs().max() < train_toy.SCALE
        means = torch.stack([points.x[points.y == c].mean(0) for c in range(cfg.num_tasks * cfg.classes_per_task)])
        gaps = torch.cdist(means, means) + 1e9 * torch.eye(len(means))
        assert gaps.min() > 20.0, gaps.min()


@pytest.mark.parametrize("num_classes, hidden", [(2, 8), (15, 64), (20, 32)])
def test_denoiser_shapes_gradients_and_bounded_correction(num_classes, hidden):
    """eps_hat has x_t's shape (B, 2), every parameter gets a gradient, and eps_hat - x_t stays bounded as
    |x_t| grows (the MLP sees only bounded features). Catches an unused parameter (e.g. the label embedding) or
    the raw x_t fed to the MLP unclamped, whose output then grows with |x_t| and blows DDIM up (module docstring)."""
    torch.manual_seed(0)
    model = train_toy.ToyDenoiser(num_classes, hidden)
    x, t, y = torch.randn(7, 2), torch.randint(0, 1000, (7,)), torch.randint(0, num_classes, (7,))
    out = model(x, t, y)
    assert out.shape == (7, 2)
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        far = [float((model(x * s, t, y) - x * s).abs().max()) for s in (1e2, 1e4, 1e6)]
    assert all(math.isfinite(f) and f < 50.0 for f in far), far  # unclamped: grows like |x_t| (1e2 .. 1e6)


def test_every_method_learns_task1_and_replay_and_tr_forget_less_than_finetune(tmp_path):
    """At the default settings (150 steps a task, lambda 15,000), in-process: every method brings Task 1's FD from
    thousands (after 2 steps: 6,800-11,300) under 300 after Task 1 (ewc equals finetune until its first Fisher, so it
    is not run), and after Task 2 replay and tr have forgotten Task 1 less than finetune, which forgets by
    thousands. Catches a learner that does not train, a replay pool or Fisher never handed to the learner, or a
    teacher frozen at the wrong time (distilling the untrained model)."""
    results = {}
    for method, tasks in (("finetune", 2), ("replay", 2), ("tr", 2), ("ftml", 1), ("vrmcl", 1)):
        cfg = train_toy.Config(method=method, seeds=1, num_tasks=tasks, curve="off", progress=False)
        train_toy.run_one(cfg, str(tmp_path))
        results[method] = json.loads((tmp_path / f"{method}-s0" / "summary.json").read_text())
    for method, s in results.items():
        assert s["R"][0][0] < 300.0, (method, s["R"])
    forgetting = {m: results[m]["forgetting"] for m in ("finetune", "replay", "tr")}
    assert forgetting["finetune"] > 1000.0, forgetting
    assert forgetting["replay"] < forgetting["finetune"] and forgetting["tr"] < forgetting["finetune"], forgetting


def test_every_method_runs_predicting_x0(tmp_path, monkeypatch):
    """--prediction sample, in process: all six methods finish, and every schedule built carries the x0 form.
    Catches: a script that parses the flag but builds its diffusion.Schedule without it (trains epsilon)."""
    made = record_schedules(monkeypatch)
    train_toy.main(["--preset", "smoke", "--out", str(tmp_path / "s"), "--workers", "1", "--prediction", "sample"])
    assert made and set(made) == {"sample"}
    for m in train_toy.LONGEST_FIRST:
        assert json.loads((tmp_path / "s" / f"{m}-s0" / "config.json").read_text())["prediction"] == "sample"
        assert json.loads((tmp_path / "s" / f"{m}-s0" / "summary.json").read_text())["n_tasks_trained"] == 2


def test_adam_state_is_carried_unless_reset(tmp_path):
    """The toy carries Adam's moments across the boundary (its default, as its results were made); with
    --reset-optimizer the last task's Adam has taken that task's 12 steps, not 24. Catches a flag that is parsed
    but never reaches experiment.transition."""
    for flag, steps in (("--no-reset-optimizer", 24.0), ("--reset-optimizer", 12.0)):
        result = toy("--preset", "smoke", "--method", "finetune", flag, "--out", str(tmp_path / flag))
        assert result.returncode == 0, result.stderr[-3000:]
        assert adam_steps(tmp_path / flag / "finetune-s0" / "checkpoint.pt", "finetune") == {steps}


def test_curve_at_each_task_end_equals_R_first_column(smoke):
    """The Task-1 curve and R share one evaluation protocol (sample count, sampler noise fixed per task), so the
    curve's point at the end of every task is R[k][0] exactly, and Table 2's reference is R[0][0]. Catches curve
    and R drawing different sampler noise (Table 2 would then compare numbers from two protocols)."""
    _, runs = smoke
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        ends = dict(s["task1_curve"])
        steps = s["transitions"] + [s["task1_curve"][-1][0]]
        assert [ends[g] for g in steps] == [row[0] for row in s["R"]], run
