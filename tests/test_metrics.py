"""Tests for metrics.py: Table 1 and Table 2 on hand-made data, run files, Figure 2 and the aggregation CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import metrics
import runfiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = None


# ----------------------------------------------------------------------------- Table 1

def test_table1_success_drop_is_forgetting():
    R = [[0.9, N, N], [0.5, 0.8, N], [0.3, 0.6, 1.0]]
    out = metrics.table1(R, higher_is_better=True)
    assert out["average"] == pytest.approx((0.3 + 0.6 + 1.0) / 3)
    assert out["per_task_forgetting"] == pytest.approx([0.6, 0.2])  # R[j][j] - R[-1][j], last task excluded
    assert out["forgetting"] == pytest.approx(0.8 / 3)  # Continual World: the sum over all 3 tasks / 3, not / 2


def test_table1_fid_rise_is_forgetting_and_improvement_is_negative():
    R = [[40.0, N, N], [60.0, 50.0, N], [70.0, 45.0, 30.0]]
    out = metrics.table1(R, higher_is_better=False)
    assert out["average"] == pytest.approx((70 + 45 + 30) / 3)
    assert out["per_task_forgetting"] == pytest.approx([30.0, -5.0])  # R[-1][j] - R[j][j]
    assert out["forgetting"] == pytest.approx(25.0 / 3)  # the last task's 0 counts (Continual World's mean)


def test_table1_partial_run_single_task_and_bad_matrix():
    R = metrics.empty_matrix(4)
    R[0][0], R[1][0], R[1][1] = 1.0, 0.5, 0.7  # two of four tasks trained: all-None rows are dropped
    assert metrics.table1(R, True)["forgetting"] == pytest.approx(0.5 / 2)  # mean over the 2 tasks trained
    assert metrics.table1([[0.8]], True) == {"average": 0.8, "forgetting": None, "per_task_forgetting": []}
    assert metrics.table1([[np.float32(0.5)]], True)["average"] == 0.5  # numpy scalars are scores too
    with pytest.raises(ValueError, match="missing score"):
        metrics.table1([[0.8, N], [0.3, N]], True)


# ----------------------------------------------------------------------------- Table 2

def _curve(points_by_task, steps_per_task=100):
    """(global_step, in_task_step, task, score) from {task: [(in_task_step, score), ...]}."""
    return [(k * steps_per_task + s, s, k, y) for k, pts in points_by_task.items() for s, y in pts]


def test_reconvergence_success_known_answers():
    curve = _curve({
        0: [(50, 0.6), (100, 1.0)],
        1: [(2, 0.5), (4, 0.85), (6, 0.95), (8, 0.7), (100, 0.97)],  # 0.8 at 4, 0.9 at 6, 0.99 never
        2: [(2, 0.99), (4, 0.1), (100, 0.2)],  # first crossing counts even if lost later
        3: [(2, 0.1), (100, 0.2)],  # never
    })
    out = metrics.reconvergence(curve[::-1], [100, 200, 300], ref=1.0, thresholds=(0.99, 0.9, 0.8),
                                higher_is_better=True)
    assert out == {"0.99": {"T2": None, "T3": 2, "T4": None},
                   "0.9": {"T2": 6, "T3": 2, "T4": None},
                   "0.8": {"T2": 4, "T3": 2, "T4": None}}


def test_reconvergence_fid_known_answers_and_later_task():
    curve = _curve({1: [(2, 80.0), (10, 58.0), (15, 54.0), (100, 60.0)],
                    2: [(2, 64.0), (100, 66.0)],
                    3: [(2, 90.0), (1000, 55.0)]}, steps_per_task=1000)
    out = metrics.reconvergence(curve, [1000, 2000, 3000], ref=50.0, thresholds=(0.1, 0.2, 0.3),
                                higher_is_better=False)
    assert out["0.1"] == {"T2": 15, "T3": None, "T4": 1000}  # the task's last step is still in that task
    assert out["0.2"] == {"T2": 10, "T3": None, "T4": 1000}
    assert out["0.3"] == {"T2": 10, "T3": 2, "T4": 1000}
    later = metrics.reconvergence(curve, [1000, 2000, 3000], 50.0, (0.3,), False, task=1)  # App. D: task 2
    assert later == {"0.3": {"T3": 2, "T4": 1000}}


def test_reconvergence_rejects_bad_transitions():
    with pytest.raises(ValueError, match="transitions"):
        metrics.reconvergence([], [0, 100], 1.0, (0.9,), True)
    with pytest.raises(ValueError, match="training task 2"):
        metrics.reconvergence([(150, 50, 2, 1.0)], [100], 1.0, (0.9,), True)


def test_reconvergence_undefined_when_task_never_learned():
    # SR0 = 0: "SR >= alpha * 0" holds for any curve, so no step count is reported (paper Section 4.3's target
    # needs a learned task); FID references are always positive and stay defined.
    curve = [(105, 5, 1, 0.0), (110, 10, 1, 0.0)]
    out = metrics.reconvergence(curve, [100], ref=0.0, thresholds=(0.99, 0.8), higher_is_better=True)
    assert out == {"0.99": {"T2": "n/a"}, "0.8": {"T2": "n/a"}}
    defined = metrics.reconvergence(curve, [100], ref=0.1, thresholds=(0.8,), higher_is_better=True)
    assert defined == {"0.8": {"T2": None}}
    assert metrics.aggregate_steps(["n/a", "n/a"]) == "n/a"
    assert metrics.aggregate_steps(["n/a", 4, 6]) == "5"  # seeds that never learned the task are left out
    assert metrics.aggregate_steps(["n/a", None]) == "—"
    md = metrics.table2_markdown({"EWC": [out]}, [0.99, 0.8], True)
    assert "| EWC | n/a | n/a |" in md and "n/a = undefined" in md


def test_aggregate_steps_rule_and_markdown_dash():
    assert metrics.aggregate_steps([4, 6]) == "5"
    assert metrics.aggregate_steps([4, None]) == "4 (1/2)"
    assert metrics.aggregate_steps([None, None, 4]) == "—"
    assert metrics.aggregate_steps([None]) == "—"
    tables = [{"0.9": {"T2": 4, "T3": None}}, {"0.9": {"T2": 6, "T3": None}}]
    md = metrics.table2_markdown({"Trust Region": tables}, [0.9], True)
    assert "| Method | 90% T2 | 90% T3 |" in md and "| Trust Region | 5 | — |" in md
    assert "No later task has been trained yet." in metrics.table2_markdown({"EWC": [{"0.9": {}}]}, [0.9], True)
    md_fid = metrics.table2_markdown({"EWC": [{"0.1": {"T2": None}}]}, [0.1], False)
    assert "+10% T2" in md_fid and "| EWC | — |" in md_fid


def test_table1_markdown_percent_and_single_seed():
    rows = {"Trust Region": [{"average": 0.88, "forgetting": 0.04}, {"average": 0.89, "forgetting": 0.05}],
            "EWC": [{"average": 0.176, "forgetting": 0.737}]}
    md = metrics.table1_markdown(rows, "success", "CW10")
    assert "| Trust Region | 88.5% ± 0.5 | 4.5 ± 0.5 | 2 |" in md  # s.e. = std(ddof=1)/sqrt(n) = 0.5
    assert "| EWC | 17.6% ± — | 73.7 ± — | 1 |" in md
    md = metrics.table1_markdown({"Replay": [{"average": 53.4, "forgetting": None}]}, "fid")
    assert "| Replay | 53.4 ± — | — | 1 |" in md


def test_mean_se():
    mean, se = metrics.mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1.0 / math.sqrt(3))


# ----------------------------------------------------------------------------- eval schedule

def test_eval_schedule_values():
    s = metrics.eval_schedule(10_000)
    assert s[:8] == [2, 4, 6, 8, 10, 15, 20, 25]
    assert {95, 100, 150, 550, 1000, 2000, 10_000} <= set(s) and 105 not in s and 1500 not in s
    assert s == sorted(set(s)) and s[-1] == 10_000
    assert metrics.eval_schedule(123)[-3:] == [95, 100, 123]  # capped, always ends at steps_per_task
    assert metrics.eval_schedule(100)[-2:] == [95, 100]  # no duplicate when the cap is a schedule point
    assert metrics.eval_schedule(7) == [2, 4, 6, 7]
    assert metrics.eval_schedule(1) == [1]
    assert metrics.eval_schedule(500, dense=False) == [500]
    with pytest.raises(ValueError, match="steps_per_task"):
        metrics.eval_schedule(0)


# ----------------------------------------------------------------------------- summary + aggregation CLI

def _write_run(root, method, seed, experiment="cw10", task_names=("a", "b", "c")):
    hib = experiment == "cw10"
    good, bad = (0.9, 0.2) if hib else (40.0, 90.0)
    R = [[good, N, N], [bad, good, N], [good - 0.05 * seed if hib else good + seed, bad, good]]
    back = good if method != "finetune" else bad  # finetuning never re-converges here
    curve = [(0, 0, 0, bad), (100, 100, 0, good), (102, 2, 1, bad), (110, 10, 1, back), (200, 100, 1, back),
             (202, 2, 2, back), (300, 100, 2, bad)]
    thresholds = metrics.SUCCESS_THRESHOLDS if hib else metrics.FID_THRESHOLDS
    summary = metrics.build_summary(method, seed, experiment, list(task_names), R, hib, curve, [100, 200],
                                    thresholds, extra={"is_proxy": True},
                                    task_curves={1: [(202, 2, 2, back), (300, 100, 2, back)]})
    run_dir = root / f"{experiment}_{method}_s{seed}"
    runfiles.atomic_write_json(run_dir / "summary.json", summary)
    return str(run_dir)


def test_build_summary_schema(tmp_path):
    run = _write_run(tmp_path, "tr", 1)
    s = json.loads(open(os.path.join(run, "summary.json")).read())
    assert set(metrics.SUMMARY_FIELDS) <= set(s) and s["score_name"] == "success"
    assert s["reconvergence"]["T1"]["0.9"] == {"T2": 10, "T3": 2}
    assert s["reconvergence"]["T2"]["0.9"] == {"T3": 2}
    assert s["task1_curve"][1] == [100, 0.9] and s["transitions"] == [100, 200]
    with pytest.raises(ValueError, match="higher_is_better"):
        metrics.build_summary("tr", 0, "imagenet", ["a"], [[1.0]], True, [], [], (0.1,))
    numpy_curve = [(np.int64(12), np.int64(2), 1, np.float32(30.0))]  # numpy scalars still serialise
    s = metrics.build_summary("tr", 0, "imagenet", ["a", "b"], [[np.float64(30.0), N], [31.0, 20.0]], False,
                              numpy_curve, [10], metrics.FID_THRESHOLDS)
    assert json.loads(json.dumps(s))["reconvergence"]["T1"]["0.1"] == {"T2": 2}


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "metrics.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_aggregate_cli_two_seeds_per_method(tmp_path):
    runs = [_write_run(tmp_path, m, seed, exp) for exp in ("cw10", "imagenet") for m in ("tr", "finetune")
            for seed in (1, 2)]
    out = tmp_path / "agg"
    res = _cli("aggregate", *runs, "--out", str(out))
    assert res.returncode == 0, res.stderr
    t1 = (out / "table1.md").read_text()
    assert t1.index("Finetuning") < t1.index("Trust Region")  # paper order, not argument order
    # final rows (0.9 - 0.05 seed, 0.2, 0.9): SR 64.2% +- 0.8; F = (0.05 seed + 0.7) / 3 -> 25.8 +- 0.8 points
    assert "| Trust Region | 64.2% ± 0.8 | 25.8 ± 0.8 | 2 |" in t1
    assert "| Trust Region | 57.2 ± 0.2 | 17.2 ± 0.2 | 2 |" in t1  # ImageNet: FID final rows (40 + seed, 90, 40)
    t2 = (out / "table2.md").read_text()
    assert t2.count("| Trust Region | 10 | 2 | 10 | 2 | 10 | 2 |") == 2  # Task 1, 3 thresholds x (T2, T3)
    assert t2.count("| Finetuning | — | — | — | — | — | — |") == 2
    assert "| Finetuning | — | — | — |" in t2.split("Task 2 (CW10)")[1]
    for exp in ("cw10", "imagenet"):
        assert (out / f"figure2_{exp}.png").read_bytes()[:4] == b"\x89PNG"


def test_aggregate_cli_bad_input_exit_2(tmp_path):
    good = _write_run(tmp_path, "tr", 1)
    res = _cli("aggregate", good, str(tmp_path / "nope"), "--out", str(tmp_path / "agg"))
    assert res.returncode == 2 and "error: missing" in res.stderr
    other = _write_run(tmp_path, "ewc", 1, task_names=("x", "y", "z"))
    res = _cli("aggregate", good, other, "--out", str(tmp_path / "agg"))
    assert res.returncode == 2 and "disagree on 'task_names'" in res.stderr
    res = _cli("aggregate", good, good, "--out", str(tmp_path / "agg"))
    assert res.returncode == 2 and "same seed" in res.stderr


def test_aggregate_rejects_mixed_fid_extractors_and_notes_proxy(tmp_path):
    a, b = _write_run(tmp_path, "tr", 1, "imagenet"), _write_run(tmp_path, "tr", 2, "imagenet")
    for run, extractor in ((a, "inception"), (b, "proxy-randconv-v1")):
        s = json.loads(open(os.path.join(run, "summary.json")).read())
        s["extra"].update(extractor=extractor, is_proxy=extractor.startswith("proxy"))
        runfiles.atomic_write_json(os.path.join(run, "summary.json"), s)
    with pytest.raises(ValueError, match="extractor"):
        metrics.load_summaries([a, b])
    paths = metrics.aggregate([b], str(tmp_path / "agg"))  # one proxy run: labelled as such
    assert "FID-proxy (extractor proxy-randconv-v1)" in open(paths[0]).read()


def test_summary_markdown_shows_matrix_and_tables(tmp_path):
    s = json.loads(open(os.path.join(_write_run(tmp_path, "finetune", 1), "summary.json")).read())
    md = metrics.summary_markdown(s)
    assert "| c | 85.0 | 20.0 | 90.0 |" in md and "| b | 20.0 | 90.0 | — |" in md
    assert "| Finetuning | 65.0% ± — | 25.0 ± — | 1 |" in md and "Steps to re-converge Task 2" in md  # (5 + 70) / 3


def test_aggregate_names_a_cw10_subsequence_in_the_titles(tmp_path):
    """Runs of a CW10 subsequence (the small preset) say so in both tables; whole-CW10 runs do not."""
    run = _write_run(tmp_path, "tr", 1)
    s = json.loads(open(os.path.join(run, "summary.json")).read())
    s["extra"]["sequence"] = "subsequence of CW10: tasks 6-10"
    runfiles.atomic_write_json(os.path.join(run, "summary.json"), s)
    t1, t2 = (open(p).read() for p in metrics.aggregate([run], str(tmp_path / "agg"))[:2])
    assert "### CW10 [subsequence of CW10: tasks 6-10]" in t1
    assert "# Table 2 (CW10 [subsequence of CW10: tasks 6-10])" in t2
    s["extra"]["sequence"] = "CW10"
    runfiles.atomic_write_json(os.path.join(run, "summary.json"), s)
    assert "subsequence" not in open(metrics.aggregate([run], str(tmp_path / "agg2"))[0]).read()


def test_reference_is_the_task_end_never_a_mid_task_point():
    """Table 2's reference of task j: the curve point at task j's end (global step transitions[j]); without one,
    R[j][j]. Catches: the last own-task point taken whatever its step (with curve "50,250" and 750-step tasks that was
    hammer's 0.00 at step 250, not its 0.90 at the end), or the end point of another task."""
    R = [[0.9], [0.1, 0.8]]
    mid_only = [(250, 250, 0, 0.0), (800, 50, 1, 0.3)]
    assert metrics.reference(mid_only, 0, R, [750]) == 0.9
    with_end = [(250, 250, 0, 0.0), (750, 750, 0, 0.85), (800, 50, 1, 0.3)]
    assert metrics.reference(with_end, 0, R, [750]) == 0.85
