"""Task 1's paths after each task of a CW10 run: forgetting you can see (the image experiment's sample grids, for a
policy). train_cw10.py records Task 1's evaluation episodes after every task (cw10_data.rollout's `paths`) and
writes them here, as task1_paths.npz and task1_paths.png; `python train_cw10.py --compare RUN ... --out FILE.png`
puts several runs' pictures in one.
"""
import json
import os

import numpy as np
import torch

import runfiles

# Meta-World's observation layout (metaworld 3.1.1, SawyerXYZEnv): hand xyz, gripper, object xyz + quaternion, a
# second object, the previous frame, goal xyz (36:39)
HAND, OBJECT, GOAL = slice(0, 3), slice(4, 7), slice(36, 39)


def task_paths(paths: list, n: int, max_path_length: int) -> dict:
    """The first n episodes of rollout(paths=...)'s list as {"xyz": (n, T+1, 9) float32 tensor of hand, object and
    goal positions, "success": (n,) bool tensor}. An episode that stopped at its success keeps its last observation
    for the remaining steps (the environment was not stepped any more)."""
    xyz, ok = [], []
    for trace, success in paths:
        pad = np.repeat(trace[:, -1:], max_path_length + 1 - trace.shape[1], axis=1)
        full = np.concatenate([trace, pad], axis=1)  # (m, T+1, 39)
        xyz.append(np.concatenate([full[..., HAND], full[..., OBJECT], full[..., GOAL]], axis=-1))
        ok.append(success)
    return {"xyz": torch.from_numpy(np.concatenate(xyz)[:n].astype(np.float32)),
            "success": torch.from_numpy(np.concatenate(ok)[:n])}


def plot_paths(out: str, rows: list[list[dict]], row_names: list[str], col_names: list[str], title: str) -> None:
    """PNG (atomic) of Task 1's episodes seen from above (x, y), rows[r][c] = task_paths' dict or None (blank): per
    episode, one colour: the hand's path (thin), the object's path (dashed, a dot where it started), the goal (star)
    and where the object ended (a filled circle if the episode succeeded, a cross if not). Same axes everywhere."""
    import matplotlib  # local, as metrics.plot_figure2

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for row in rows for c in row if c is not None]
    pts = np.concatenate([c["xyz"].numpy().reshape(-1, 3, 3)[:, :, :2].reshape(-1, 2) for c in cells])
    lo, hi = pts.min(0) - 0.02, pts.max(0) + 0.02
    ncol = len(col_names)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.7 * ncol + 1.0, 1.7 * len(rows) + 0.7), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncol):
            ax, cell = axes[r][c], row[c] if c < len(row) else None
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_names[r], fontsize=8)
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
            ax.set_title(f"{col_names[c]}: {int(ok.sum())}/{len(ok)}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    runfiles.atomic_write(out, "wb", lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write_paths(out_dir: str, paths: list[dict], tasks: list[str], name: str) -> None:
    """task1_paths.npz (xyz (K, E, T+1, 9), success (K, E): Task 1's episodes after tasks 1..K) and task1_paths.png
    (one row, a column per task end) in a run folder, both atomic."""
    path = os.path.join(out_dir, "task1_paths.npz")
    runfiles.atomic_write(path, "wb", lambda f: np.savez_compressed(
        f, xyz=np.stack([p["xyz"].numpy() for p in paths]), success=np.stack([p["success"].numpy() for p in paths]),
        tasks=np.array(tasks)))
    plot_paths(os.path.join(out_dir, "task1_paths.png"), [paths], [name],
               [f"after T{k + 1}" for k in range(len(paths))], f"Task 1 ({tasks[0]}) from above, {name}")


def compare(run_dirs: list[str], out: str) -> None:
    """One PNG, one row per run: Task 1's episodes after each task (task1_paths.npz), e.g. every method of a seed.
    The runs share the evaluation episodes (fixed seeds), so each column shows the same goals in every row."""
    rows, names, ncol = [], [], 0
    for d in run_dirs:
        path = os.path.join(d, "task1_paths.npz")
        if not os.path.isfile(path):
            raise ValueError(f"{path} not found (written at every task end of a CW10 run with --path-episodes > 0)")
        with np.load(path) as z, open(os.path.join(d, "config.json"), encoding="utf-8") as f:
            cfg, tasks = json.load(f), [str(t) for t in z["tasks"]]
            rows.append([{"xyz": torch.from_numpy(x), "success": torch.from_numpy(s)}
                         for x, s in zip(z["xyz"], z["success"])])
        names.append(f"{cfg['method']} s{cfg['seed']}")
        ncol = max(ncol, len(rows[-1]))
    plot_paths(out, rows, names, [f"after T{k + 1}" for k in range(ncol)],
               f"Task 1 ({tasks[0]}) from above: hand (line), object (dashed), goal (star); o = success, x = failure")
    print(f"wrote {out}")
