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


def with_scores(paths: list[dict], run_dir: str) -> list[dict]:
    """paths' dicts with Task 1's R entry after each task ("R") and how many evaluation episodes it counts
    ("episodes"), from the run's summary.json when there is one (the panel titles of figures.paths)."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return paths
    with open(path, encoding="utf-8") as f:
        s = json.load(f)
    n = s.get("extra", {}).get("eval_episodes")
    return [{**p, "R": row[0], "episodes": n} for p, row in zip(paths, s["R"])]


def write_paths(out_dir: str, paths: list[dict], tasks: list[str], name: str) -> None:
    """task1_paths.npz (xyz (K, E, T+1, 9), success (K, E): Task 1's episodes after tasks 1..K) and task1_paths.png
    (one row, a column per task end) in a run folder, both atomic."""
    path = os.path.join(out_dir, "task1_paths.npz")
    runfiles.atomic_write(path, "wb", lambda f: np.savez_compressed(
        f, xyz=np.stack([p["xyz"].numpy() for p in paths]), success=np.stack([p["success"].numpy() for p in paths]),
        tasks=np.array(tasks)))
    figures.paths(os.path.join(out_dir, "task1_paths.png"), [with_scores(paths, out_dir)], [name],
                  [f"after T{k + 1}" for k in range(len(paths))],
                  f"Task 1 ({tasks[0]}) seen from above after each task, {name}")


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
            rows.append(with_scores([{"xyz": torch.from_numpy(x), "success": torch.from_numpy(s)}
                                     for x, s in zip(z["xyz"], z["success"])], d))
        names.append(f"{cfg['method']} s{cfg['seed']}")
        ncol = max(ncol, len(rows[-1]))
    figures.paths(out, rows, names, [f"after T{k + 1}" for k in range(ncol)],
                  f"Task 1 ({tasks[0]}) seen from above after each task, a row per run")
    print(f"wrote {out}")
