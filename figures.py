"""Pictures of runs: Figure 2 (Task 1's score over continual training, paper Section 4.3), the score matrix R as a
heatmap, and Task 1's CW10 episodes seen from above. metrics.write_run_outputs draws a run's figure2.png and
r_matrix.png, metrics.aggregate the same over seeds (figure2_<experiment>.png, r_matrix_<experiment>.png), and
cw10_paths the episodes (task1_paths.png). Nothing here is the paper's math: these functions only draw.

Input: summary.json dicts (schema in metrics.py's docstring) grouped by the name a method is shown under,
runs = {label: [summary of each seed, ...]}. Every function writes one PNG atomically and returns its matplotlib
Figure (closed), so the tests read its labels instead of its pixels.

What the pictures say without the README
    Figure 2: one marker per evaluated point; the legend names each method with its seed count and is drawn
    outside the axes; the shaded band is mean ± s.e. over the seeds (only methods with > 1 seed have one); the
    task names stand at the task boundaries (dashed lines). Methods keep their colour, marker and line style in
    every figure; wider lines are drawn under thinner ones, so a line under another one at the same values
    (finetune and EWC both at 0) still shows. The values are drawn as they are, never offset.
    R heatmap: R[i][j] = score of task j after training task i, the mean over seeds, lower triangle, each cell
    annotated; success in percent on a 0-100 scale, FID with its direction said (lower is better).
    Task-1 paths: a key (hand, object, goal; colour = which evaluation episode), axes in metres (Meta-World's
    x, y), per panel the successes among the episodes shown and R's entry over all evaluation episodes.
"""
import math
import re
import textwrap

import numpy as np

import runfiles

# method -> (colour, marker, line style, line width, marker size, hollow marker). Wider lines are drawn first, so
# where curves coincide (the methods that train Task 1 alike; finetune and EWC both at 0) each thinner line runs
# inside the wider ones and every one stays visible.
STYLES = {"finetune": ("tab:blue", "o", "-", 4.0, 9.0, True), "replay": ("tab:green", "^", "-.", 2.6, 7.5, True),
          "ewc": ("tab:orange", "s", "--", 1.8, 4.5, False), "ftml": ("tab:red", "D", ":", 1.6, 4.5, False),
          "vrmcl": ("tab:purple", "v", (0, (5, 1, 1, 1)), 1.4, 5.0, False),
          "tr": ("tab:brown", "*", "-", 1.2, 6.5, False)}
BAND_NOTE = "shaded band: mean ± s.e. over the seeds\n(only methods with > 1 seed have one)"


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported here, so that importing a module never picks a backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi=120):
    runfiles.atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    _pyplot().close(fig)
    return fig


def task_labels(names):
    """Short task labels for axes: "T<k> name", from T<k> on when the name already says it ("shapes T3 (classes
    10-14)" -> "T3 classes 10-14"), a -v<N> suffix and parentheses dropped, at most 24 characters."""
    out = []
    for k, name in enumerate(names):
        name = re.sub(r"-v\d+$", "", str(name))
        own = re.search(rf"\bT{k + 1}\b.*", name)
        label = (own.group(0) if own else f"T{k + 1} {name}").replace("(", "").replace(")", "")
        out.append(label if len(label) <= 24 else label[:23] + "…")
    return out


def mean_curve(curves):
    """(xs, mean, se) over seeds if all curves share the same global steps, else None. se is 0 for one seed."""
    xs = [tuple(x for x, _ in c) for c in curves]
    if any(x != xs[0] for x in xs):
        return None
    ys = np.asarray([[y for _, y in c] for c in curves], dtype=np.float64)  # (seeds, points)
    se = ys.std(axis=0, ddof=1) / math.sqrt(len(curves)) if len(curves) > 1 else np.zeros(ys.shape[1])
    return np.asarray(xs[0]), ys.mean(axis=0), se


def mean_r(summaries):
    """The mean over seeds of the trained rows of R, (t, t) float64 with NaN above the diagonal."""
    t = summaries[0]["n_tasks_trained"]
    R = np.asarray([[[np.nan if v is None else v for v in row[:t]] for row in s["R"][:t]] for s in summaries],
                   dtype=np.float64)  # (seeds, t, t)
    return R.mean(axis=0)


# ----------------------------------------------------------------------------- Figure 2

def figure2(runs, path, ylabel, title):
    """Figure 2: Task 1's score vs global gradient step, one line per method (the mean over its seeds), gray dashed
    lines at the task transitions with the task names above them; a log y axis for FID spanning decades."""
    plt = _pyplot()
    first = next(iter(runs.values()))[0]
    fig, ax = plt.subplots(figsize=(9, 4))
    handles, labels, banded, ys = [], [], False, []
    for i, (label, summaries) in enumerate(runs.items()):
        color, marker, style, width, size, hollow = STYLES.get(summaries[0]["method"],
                                                               (f"C{i % 10}", "o", "-", 1.0, 4.0, False))
        agg = mean_curve([s["task1_curve"] for s in summaries])
        if agg is None:  # seeds evaluated at different steps: one line per seed
            lines = [(f"{label}, seed {s['seed']}", *np.asarray(s["task1_curve"], dtype=np.float64).T, None)
                     for s in summaries]
        else:
            xs, mean, se = agg
            n = len(summaries)
            lines = [(f"{label} ({n} seed{'s' * (n > 1)})", xs, mean, se if n > 1 else None)]
        for name, xs, mean, se in lines:
            line, = ax.plot(xs, mean, color=color, marker=marker, linestyle=style, linewidth=width,
                            markersize=size if len(xs) <= 40 else 0.7 * size,
                            markerfacecolor="none" if hollow else color, markeredgewidth=1.0, zorder=10 - width)
            handle = line
            if se is not None:
                band = ax.fill_between(xs, mean - se, mean + se, color=color, alpha=0.2, linewidth=0, zorder=1)
                handle, banded = (band, line), True
            handles.append(handle)
            labels.append(name)
            ys.extend(mean)
    end = max(max(x for x, _ in s["task1_curve"]) for ss in runs.values() for s in ss)
    starts = [0, *first["transitions"]]
    for step in first["transitions"]:
        ax.axvline(step, color="gray", linestyle="--", linewidth=0.8, zorder=0)
    ax.set_xlim(-0.01 * end, 1.01 * end)
    if first["higher_is_better"]:
        ax.set_ylim(-0.03, 1.03)  # success rates: the whole 0-1 range, 0 clear of the frame
    elif min(ys) > 0 and max(ys) > 20 * min(ys):  # scores spanning decades: a log axis
        ax.set_yscale("log")
    top = ax.twiny()  # task names at the boundaries, as tick labels of a top axis
    top.set_xlim(ax.get_xlim())
    top.set_xticks(starts, task_labels(first["task_names"][:len(starts)]), rotation=35, ha="left",
                   rotation_mode="anchor", fontsize=7)
    top.tick_params(axis="x", length=0, pad=2)
    ax.set_xlabel("gradient update steps over the task sequence (markers: evaluated points)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title=BAND_NOTE if banded else None, title_fontsize=7, alignment="left")
    return _save(fig, path)


# ----------------------------------------------------------------------------- R heatmap

def cell_text(value, higher_is_better):
    """A heatmap cell's annotation: success in percent (value already scaled) without decimals; FID (or the toy's
    scores) without decimals from 100, with one from 1, else 2 significant digits."""
    if higher_is_better or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def r_matrix(runs, path, score_label, title):
    """The score matrix R, mean over seeds, one panel per method: R[i][j] = score of task j (column) after
    training task i (row), lower triangle, every cell annotated, one colour scale for all panels."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm, Normalize

    first = next(iter(runs.values()))[0]
    hib, t = first["higher_is_better"], first["n_tasks_trained"]
    scale = 100.0 if hib else 1.0
    means = {label: mean_r(summaries) * scale for label, summaries in runs.items()}
    if hib:
        norm, cmap, bar = Normalize(0.0, 100.0), "viridis", f"{score_label} (%), higher is better"
    else:
        values = np.concatenate([m[~np.isnan(m)] for m in means.values()])
        lo, hi = float(values.min()), float(values.max())
        norm = LogNorm(lo, hi) if lo > 0 and hi > 20 * lo else Normalize(lo, hi if hi > lo else lo + 1.0)
        cmap, bar = "viridis_r", f"{score_label}, lower is better (bright = good)"
    names = task_labels(first["task_names"][:t])
    ncol = min(len(runs), 3)
    nrow = -(-len(runs) // ncol)
    side = max(3.4, 0.42 * t + 1.6)
    fig, axes = plt.subplots(nrow, ncol, figsize=(side * ncol + 1.0, side * nrow + 0.6), squeeze=False,
                             layout="constrained")
    fontsize = 8 if t <= 6 else 7
    for ax, (label, M) in zip(axes.flat, means.items()):
        image = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, norm=norm)
        for i in range(t):
            for j in range(i + 1):
                r, g, b, _ = image.cmap(norm(M[i, j]))
                ax.text(j, i, cell_text(M[i, j], hib), ha="center", va="center", fontsize=fontsize,
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
        ax.set_xticks(range(t), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_yticks(range(t), names, fontsize=7)
        ax.set_xlabel("task j (scored)", fontsize=8)
        ax.set_ylabel("after training task i", fontsize=8)
        n = len(runs[label])
        ax.set_title(f"{label}: mean over {n} seeds" if n > 1 else f"{label}: 1 seed (seed {runs[label][0]['seed']})",
                     fontsize=9)
    for ax in axes.flat[len(runs):]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes, shrink=0.8).set_label(bar, fontsize=9)
    fig.suptitle(f"{title}\nR[i][j] = {score_label} of task j after training task i", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------- CW10: Task 1's paths from above

def paths(path, rows, row_names, col_names, title):
    """Task 1's episodes seen from above (x, y in metres), rows[r][c] = cw10_paths.task_paths' dict or None
    (blank), optionally with "R" (Task 1's success rate after that task) and "episodes" (how many evaluation
    episodes R counts). Per episode, one colour: the hand's path (thin), the object's path (dashed, a dot where it
    started), the goal (star), where the object ended (a filled circle if the episode succeeded, a cross if not).
    Same axes everywhere."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    cells = [c for row in rows for c in row if c is not None]
    pts = np.concatenate([c["xyz"].numpy().reshape(-1, 3, 3)[:, :, :2].reshape(-1, 2) for c in cells])
    lo, hi = pts.min(0) - 0.02, pts.max(0) + 0.02
    ncol, episodes = len(col_names), max(len(c["success"]) for c in cells)
    width = max(1.9 * ncol + 0.9, 5.0)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(width, 2.0 * len(rows) + 0.8), squeeze=False,
                             sharex=True, sharey=True)
    for r, row in enumerate(rows):
        for c in range(ncol):
            ax, cell = axes[r][c], row[c] if c < len(row) else None
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel(f"{row_names[r]}\ny (m)", fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("x (m)", fontsize=7)
            if cell is None:
                ax.set_frame_on(False)
                continue
            xyz, ok = cell["xyz"].numpy(), cell["success"].numpy()
            for e in range(len(xyz)):
                color = plt.cm.tab10(e % 10)
                hand, obj, goal = xyz[e, :, 0:3], xyz[e, :, 3:6], xyz[e, 0, 6:9]  # task_paths' columns
                ax.plot(hand[:, 0], hand[:, 1], color=color, linewidth=0.7)
                ax.plot(obj[:, 0], obj[:, 1], color=color, linewidth=1.4, linestyle="--")
                ax.plot(obj[0, 0], obj[0, 1], "o", color=color, markersize=2.5)
                ax.plot(goal[0], goal[1], "*", color=color, markersize=7, markeredgecolor="k", markeredgewidth=0.3)
                ax.plot(obj[-1, 0], obj[-1, 1], "o" if ok[e] else "x", color=color, markersize=5,
                        markeredgecolor="k" if ok[e] else color)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal")
            ax.xaxis.set_major_locator(plt.MaxNLocator(3))
            ax.yaxis.set_major_locator(plt.MaxNLocator(3))
            score = f"\nR = {cell['R']:.2f} over {cell['episodes']}" if cell.get("R") is not None else ""
            ax.set_title(f"{col_names[c]}: {int(ok.sum())}/{len(ok)} shown succeeded{score}", fontsize=7)
    gray = "0.35"
    key = [Line2D([], [], color=gray, linewidth=0.7, label="hand path"),
           Line2D([], [], color=gray, linewidth=1.4, linestyle="--", label="object path"),
           Line2D([], [], color=gray, marker="o", markersize=2.5, linestyle="", label="object start"),
           Line2D([], [], color=gray, marker="*", markersize=7, markeredgecolor="k", markeredgewidth=0.3,
                  linestyle="", label="goal"),
           Line2D([], [], color=gray, marker="o", markersize=5, markeredgecolor="k", linestyle="",
                  label="object end: success"),
           Line2D([], [], color=gray, marker="x", markersize=5, linestyle="", label="object end: failure"),
           *[Line2D([], [], color=plt.cm.tab10(e % 10), linewidth=2.5, label=f"episode {e + 1}")
             for e in range(episodes)]]
    fig.legend(handles=key, loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=7, frameon=False,
               title="key (colour = which\nevaluation episode)", title_fontsize=7, alignment="left")
    fig.suptitle(textwrap.fill(title, width=int(13 * width)), fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi=110)
