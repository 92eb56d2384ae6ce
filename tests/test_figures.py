"""figures.py: each picture is written as a PNG and says what it shows, checked through its matplotlib objects (the
Figure each function returns), not its pixels: legend texts, titles, tick labels, annotations."""
import json
import math

import numpy as np
import pytest
import torch

import cw10_paths
import figures
import metrics

N = None
NAMES = ["hammer-v3", "push-wall-v3", "faucet-close-v3"]
TRANSITIONS = [100, 200]


def _summary(method, seed, R, task1, experiment="cw10"):
    """A summary.json dict of a 3-task run whose Task-1 curve has the scores task1 at steps 0, 50, ..., 300."""
    task = [max(0, (50 * i - 1) // 100) for i in range(len(task1))]  # steps 100, 200 end tasks 1, 2
    curve = [(50 * i, 50 * i - 100 * k, k, y) for i, (k, y) in enumerate(zip(task, task1))]
    hib = experiment == "cw10"
    return metrics.build_summary(method, seed, experiment, NAMES, R, hib, curve, TRANSITIONS,
                                 metrics.SUCCESS_THRESHOLDS if hib else metrics.FID_THRESHOLDS)


ZERO = [0.0] * 7
R_ZERO = [[0.0, N, N], [0.0, 0.5, N], [0.0, 0.0, 0.5]]


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _renderer(fig):
    """A renderer for the closed Figure (its pyplot canvas is gone), to measure what it drew."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return FigureCanvasAgg(fig).get_renderer()


def _outside(fig, inner, outer):
    """True if artist outer's drawn box lies entirely right of artist inner's."""
    renderer = _renderer(fig)
    return outer.get_window_extent(renderer).x0 >= inner.get_window_extent(renderer).x1


# ----------------------------------------------------------------------------- Figure 2

def test_mean_curve():
    """Catches: the standard error without the 1/sqrt(n) (the std), a mean over points instead of seeds, and
    seeds evaluated at different steps averaged point by point."""
    xs, m, s = figures.mean_curve([[[0, 1.0], [10, 3.0]], [[0, 3.0], [10, 3.0]]])
    assert list(xs) == [0, 10] and list(m) == [2.0, 3.0] and list(s) == [1.0, 0.0]
    assert figures.mean_curve([[[0, 1.0]], [[5, 1.0]]]) is None


def test_figure2_legend_band_markers_task_names(tmp_path):
    """The legend names each method with its seed count and stands outside the axes, the band is named and drawn
    only for the method with > 1 seed (mean ± s.e.), every evaluated point has a marker, the task names stand at
    the task boundaries, and finetune and EWC, both at 0, are drawn at 0 with different markers and line styles,
    the wider one beneath, so neither hides the other. Catches: a legend without seed counts or over Task 1's
    learning phase, an unnamed band or one for a single seed, a line without markers, boundaries without task
    names, a value offset to show a hidden line, two methods with the same style drawn over each other."""
    tr = [[0.1, 0.9, 0.5, 0.7, 0.6, 0.8, 0.7], [0.2, 0.8, 0.3, 0.5, 0.6, 0.6, 0.5], [0.0, 1.0, 0.4, 0.6, 0.6, 0.7, 0.9]]
    runs = {"Finetuning": [_summary("finetune", 0, R_ZERO, ZERO)], "EWC": [_summary("ewc", 0, R_ZERO, ZERO)],
            "Trust Region": [_summary("tr", s, R_ZERO, y) for s, y in enumerate(tr)]}
    path = tmp_path / "figure2.png"
    fig = figures.figure2(runs, path, "Task 1 success rate", "CW10: Task 1")
    assert _png(path)
    ax, top = fig.axes
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["Finetuning (1 seed)", "EWC (1 seed)",
                                                          "Trust Region (3 seeds)"]
    assert "mean ± s.e. over the seeds" in legend.get_title().get_text()
    assert "> 1 seed" in legend.get_title().get_text()
    assert _outside(fig, ax, legend)
    assert len(ax.collections) == 1  # one band: Trust Region's
    band = ax.collections[0].get_paths()[0].vertices  # (points, 2) outline of the shaded area
    mean, se = np.mean(tr, axis=0), np.std(tr, axis=0, ddof=1) / math.sqrt(3)
    for x, lo, hi in zip(range(0, 301, 50), mean - se, mean + se):
        assert all(np.isclose(band, [x, y]).all(axis=1).any() for y in (lo, hi)), (x, lo, hi)
    finetune, ewc, trust = [line for line in ax.get_lines() if len(line.get_xdata()) == 7]
    assert list(trust.get_xdata()) == [0, 50, 100, 150, 200, 250, 300] and np.allclose(trust.get_ydata(), mean)
    for line in (finetune, ewc, trust):
        assert line.get_marker() not in (None, "None", "", " ") and line.get_markevery() is None
    assert list(finetune.get_ydata()) == list(ewc.get_ydata()) == ZERO  # drawn where they are
    assert (finetune.get_marker(), finetune.get_linestyle()) != (ewc.get_marker(), ewc.get_linestyle())
    assert finetune.get_linewidth() > ewc.get_linewidth() and finetune.get_markersize() > ewc.get_markersize()
    assert finetune.get_zorder() < ewc.get_zorder()  # the wider line beneath
    assert [t.get_text() for t in top.get_xticklabels()] == ["T1 hammer", "T2 push-wall", "T3 faucet-close"]
    assert list(top.get_xticks()) == [0, *TRANSITIONS] and top.get_xlim() == ax.get_xlim()
    assert ax.get_ylim()[0] < 0 < 1 < ax.get_ylim()[1]  # 0 and 1 clear of the frame


def test_figure2_fid_spanning_decades_on_a_log_axis(tmp_path):
    """FID from 4000 down to 12 on a log axis, one seed: no band and no band note. Catches: a linear axis that
    flattens everything after the first task, a band note with no band."""
    fid = [4000.0, 12.0, 900.0, 800.0, 1500.0, 1200.0, 1100.0]
    R = [[12.0, N, N], [800.0, 15.0, N], [1100.0, 20.0, 14.0]]
    fig = figures.figure2({"Trust Region": [_summary("tr", 0, R, fid, "imagenet")]}, tmp_path / "f.png",
                          "Task 1 FID", "ImageNet")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_legend().get_title().get_text() == ""
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Trust Region (1 seed)"]


# ----------------------------------------------------------------------------- R heatmap

def _cells(ax):
    """{(row i, column j): annotation} of a heatmap panel."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}


def test_r_matrix_annotates_the_mean_over_seeds(tmp_path):
    """Each panel annotates the lower triangle of R averaged over the seeds, in percent, cell (i, j) at row i
    (after training task i) and column j (task scored), with the task names on both axes, "mean over n seeds" in
    its title and a 0-100 % colour scale that says higher is better. Catches: the first seed's R instead of the
    mean, R transposed, cells above the diagonal, success printed as a fraction, a colour scale per panel."""
    seeds = [[[0.9, N, N], [0.2, 0.8, N], [0.1, 0.3, 0.9]], [[0.7, N, N], [0.4, 0.6, N], [0.3, 0.5, 0.7]]]
    runs = {"Trust Region": [_summary("tr", s, R, ZERO) for s, R in enumerate(seeds)],
            "EWC": [_summary("ewc", 4, R_ZERO, ZERO)]}
    path = tmp_path / "r.png"
    fig = figures.r_matrix(runs, path, "success rate", "CW10: score matrix R")
    assert _png(path)
    tr, ewc, colorbar = fig.axes[0], fig.axes[1], fig.axes[-1]
    assert _cells(tr) == {(0, 0): "80", (1, 0): "30", (1, 1): "70", (2, 0): "20", (2, 1): "40", (2, 2): "80"}
    assert _cells(ewc) == {(0, 0): "0", (1, 0): "0", (1, 1): "50", (2, 0): "0", (2, 1): "0", (2, 2): "50"}
    assert tr.get_title() == "Trust Region: mean over 2 seeds" and ewc.get_title() == "EWC: 1 seed (seed 4)"
    for ticks in (tr.get_xticklabels(), tr.get_yticklabels()):
        assert [t.get_text() for t in ticks] == ["T1 hammer", "T2 push-wall", "T3 faucet-close"]
    assert tr.get_xlabel() == "task j (scored)" and tr.get_ylabel() == "after training task i"
    assert colorbar.get_ylabel() == "success rate (%), higher is better" and colorbar.get_ylim() == (0.0, 100.0)
    assert tr.images[0].norm is ewc.images[0].norm  # one colour scale


def test_r_matrix_fid_says_lower_is_better(tmp_path):
    """FID cells keep their value (one decimal below 100) and the colour bar says lower is better. Catches: FID
    scaled like a success rate, a colour scale whose direction is not said."""
    R = [[12.0, N, N], [800.0, 15.25, N], [1100.0, 20.0, 14.0]]
    fig = figures.r_matrix({"Replay": [_summary("replay", 0, R, [50.0] * 7, "imagenet")]}, tmp_path / "r.png",
                           "FID", "ImageNet")
    assert _cells(fig.axes[0]) == {(0, 0): "12.0", (1, 0): "800", (1, 1): "15.2", (2, 0): "1100", (2, 1): "20.0",
                                   (2, 2): "14.0"}
    assert "lower is better" in fig.axes[-1].get_ylabel()


def test_runs_and_aggregate_write_both_figures(tmp_path):
    """Every run writes figure2.png and r_matrix.png (figure=False, the toy's runs: neither), and aggregate writes
    figure2_<experiment>.png and r_matrix_<experiment>.png. Catches: a heatmap only the aggregate draws, or the
    toy's runs paying for figures they do not want."""
    runs = []
    for method, figure in (("tr", True), ("ewc", False)):
        summary = _summary(method, 0, R_ZERO, ZERO)
        out = tmp_path / method
        metrics.write_run_outputs(str(out), summary, figure=figure)
        assert [(out / name).exists() for name in ("figure2.png", "r_matrix.png")] == [figure, figure]
        runs.append(str(out))
    written = metrics.aggregate(runs, str(tmp_path / "agg"))
    for name in ("figure2_cw10.png", "r_matrix_cw10.png"):
        assert str(tmp_path / "agg" / name) in written and _png(tmp_path / "agg" / name)


# ----------------------------------------------------------------------------- Task 1's paths from above

def _cell(ok, T=6):
    """task_paths' dict of len(ok) episodes: the hand and the object move from x = 0 to 0.2 m, the goal at 0.2."""
    xyz = np.zeros((len(ok), T + 1, 9), np.float32)
    for e in range(len(ok)):
        xyz[e, :, 0] = xyz[e, :, 3] = np.linspace(0.0, 0.2, T + 1)
        xyz[e, :, 1] = xyz[e, :, 4] = 0.6 + 0.01 * e
        xyz[e, :, 6:8] = (0.2, 0.6)
    return {"xyz": torch.from_numpy(xyz), "success": torch.tensor(ok)}


def test_paths_key_metres_counts_and_a_title_that_fits(tmp_path):
    """The key names the hand, object and goal marks and says colour = episode (one entry per episode), the axes
    are in metres, each panel counts the successes among the episodes shown with R's entry and its episode count
    beside it, and a long title on a one-column picture is wrapped inside it. Catches: a picture without a key
    or units, successes out of the episodes shown printed next to nothing or an R over 20 as if over 4, a title
    cut off at both edges (the --compare case with few columns)."""
    cell = {**_cell([True, False, True]), "R": 0.85, "episodes": 20}
    path = tmp_path / "paths.png"
    title = "Task 1 (hammer) seen from above after each task, a row per run, " * 2
    fig = figures.paths(path, [[cell], [_cell([False, False, False])]], ["tr s0", "ewc s0"], ["after T1"], title)
    assert _png(path)
    key = fig.legends[0]
    assert [t.get_text() for t in key.get_texts()] == [
        "hand path", "object path", "object start", "goal", "object end: success", "object end: failure",
        "episode 1", "episode 2", "episode 3"]
    assert "colour" in key.get_title().get_text() and "episode" in key.get_title().get_text()
    top, bottom = fig.axes
    assert top.get_title() == "after T1: 2/3 shown succeeded\nR = 0.85 over 20"
    assert bottom.get_title() == "after T1: 0/3 shown succeeded"  # no summary.json: no R
    assert top.get_ylabel() == "tr s0\ny (m)" and bottom.get_ylabel() == "ewc s0\ny (m)"
    assert bottom.get_xlabel() == "x (m)" and [t for t in top.get_xticks()]  # ticks, in metres
    renderer = _renderer(fig)
    assert fig._suptitle.get_window_extent(renderer).width <= fig.bbox.width


def test_write_paths_and_compare_put_r_beside_the_episodes_shown(tmp_path, monkeypatch):
    """write_paths and compare take R's Task-1 column and its episode count from the run's summary.json. Catches:
    R of the last task instead of Task 1, a row of R paired with another task's end, the curve's episode count
    instead of the evaluation's."""
    drawn = []
    monkeypatch.setattr(figures, "paths", lambda *args: drawn.append(args))
    summary = {**_summary("tr", 0, [[0.9, N, N], [0.6, 0.8, N], [0.4, 0.5, 0.7]], ZERO),
               "extra": {"eval_episodes": 20, "curve_episodes": 5}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "config.json").write_text(json.dumps({"method": "tr", "seed": 0}))
    cells = [_cell([True, False]) for _ in range(3)]
    cw10_paths.write_paths(str(tmp_path), cells, NAMES, "tr s0", summary)
    cw10_paths.compare([str(tmp_path)], str(tmp_path / "cmp.png"))
    assert len(drawn) == 2
    for _, rows, *_ in drawn:
        assert [(c["R"], c["episodes"]) for c in rows[0]] == [(0.9, 20), (0.6, 20), (0.4, 20)]
