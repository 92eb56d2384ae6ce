"""Task 1's paths after each task of a CW10 run: forgetting you can see (the image experiment's sample grids, for a
policy). train_cw10.py records Task 1's evaluation episodes after every task (cw10_data.rollout's `paths`) and
writes them here, as task1_paths.npz and task1_paths.png (drawn by figures.paths); `python train_cw10.py --compare
RUN ... --out FILE.png` puts several runs' pictures in one.
"""
import json
import os

import numpy as np
import torch

import figures
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


def with_scores(paths: list[dict], summary: dict | None) -> list[dict]:
    """paths' dicts with Task 1's R entry after each task ("R") and how many evaluation episodes it counts
    ("episodes"), from the run's summary (summary.json) when there is one (the panel titles of figures.paths)."""
    if summary is None:
        return paths
    n = summary.get("extra", {}).get("eval_episodes")
    return [{**p, "R": row[0], "episodes": n} for p, row in zip(paths, summary["R"])]


def write_paths(out_dir: str, paths: list[dict], tasks: list[str], name: str, summary: dict) -> None:
    """task1_paths.npz (xyz (K, E, T+1, 9), success (K, E): Task 1's episodes after tasks 1..K) and task1_paths.png
    (one row, a column per task end; R from the run's summary) in a run folder, both atomic."""
    path = os.path.join(out_dir, "task1_paths.npz")
    runfiles.atomic_write(path, "wb", lambda f: np.savez_compressed(
        f, xyz=np.stack([p["xyz"].numpy() for p in paths]), success=np.stack([p["success"].numpy() for p in paths]),
        tasks=np.array(tasks)))
    figures.paths(os.path.join(out_dir, "task1_paths.png"), [with_scores(paths, summary)], [name],
                  [f"after T{k + 1}" for k in range(len(paths))],
                  f"Task 1 ({tasks[0]}) seen from above after each task, {name}")


def _read_run(d: str) -> tuple[dict, list[str], list[dict]]:
    """(config.json, the task sequence, task1_paths.npz's rows with their scores) of run folder d; ValueError naming
    the file that is missing or unreadable."""
    path, config = os.path.join(d, "task1_paths.npz"), os.path.join(d, "config.json")
    runfiles.require(os.path.isfile(path), f"{path} not found (written at the end of a CW10 run with "
                                           f"--path-episodes > 0)")
    runfiles.require(os.path.isfile(config), f"{config} not found: {d} is not a run folder")
    try:
        with np.load(path, allow_pickle=False) as z:
            tasks, xyz, ok = [str(t) for t in z["tasks"]], z["xyz"], z["success"]
    except Exception as e:  # zip / npy format errors of every kind, a missing array
        raise ValueError(f"{path} is unreadable ({type(e).__name__}); rerun that run's command to write it again, "
                         f"or leave {d} out") from None
    try:
        with open(config, encoding="utf-8") as f:
            cfg = json.load(f)
        summary_path = os.path.join(d, "summary.json")
        summary = None
        if os.path.isfile(summary_path):
            with open(summary_path, encoding="utf-8") as f:
                summary = json.load(f)
        rows = with_scores([{"xyz": torch.from_numpy(x), "success": torch.from_numpy(s)} for x, s in zip(xyz, ok)],
                           summary)
        runfiles.require(isinstance(cfg, dict) and "method" in cfg and "seed" in cfg, "no method or seed")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{d}: config.json or summary.json is unreadable ({type(e).__name__}: {e}); leave it "
                         f"out") from None
    return cfg, tasks, rows


def compare(run_dirs: list[str], out: str) -> None:
    """One PNG, one row per run: Task 1's episodes after each task (task1_paths.npz), e.g. every method of a seed.
    The runs share the evaluation episodes (fixed seeds), so each column shows the same goals in every row. Every
    input is read and checked (one task sequence for all runs), and `out` checked, before anything is written.
    A row is named by method and seed, and by its folder too where two rows would share a name."""
    runfiles.require(not os.path.isdir(out), f"--out {out} is a folder; name a .png file")
    runfiles.check_writable(os.path.dirname(os.path.abspath(out)), "--out's folder")
    runs = [(d, *_read_run(d)) for d in run_dirs]
    d0, _, tasks, _ = runs[0]
    for d, _, t, _ in runs[1:]:
        runfiles.require(t == tasks, f"{d} trained the tasks {','.join(t)}, {d0} {','.join(tasks)}: compare runs of "
                                     f"one task sequence")
    names = [f"{cfg['method']} s{cfg['seed']}" for _, cfg, _, _ in runs]
    names = [n if names.count(n) == 1 else f"{n} ({os.path.basename(os.path.normpath(d))})"
             for n, (d, *_) in zip(names, runs)]
    ncol = max(len(rows) for *_, rows in runs)
    figures.paths(out, [rows for *_, rows in runs], names, [f"after T{k + 1}" for k in range(ncol)],
                  f"Task 1 ({tasks[0]}) seen from above after each task, a row per run")
    print(f"wrote {out}")
