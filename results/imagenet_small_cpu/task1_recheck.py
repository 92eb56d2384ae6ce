"""Task 1's convergence test again, with 1,500 generated images per curve point instead of the preset's 300.

    python results/imagenet_small_cpu/task1_recheck.py runs/t1recheck runs/imagenet-small > \
        results/imagenet_small_cpu/task1_recheck.md

RECHECK holds s<seed>/ (train_imagenet.py --method finetune --preset small --seed S --curve 6000,7000,8000
--curve-samples 1500 --task1-cache RECHECK/task1-s<seed>.pt, stopped once the cache is written) and
task1-s<seed>.pt; ORIGINAL holds the 12 runs' tr-s<seed>/ and task1-s<seed>.pt. Prints, per seed: whether the
rerun trained the same Task 1 (every logged training loss equal, and the Task-1 end weights bit-identical), the
FID-proxy at 6,000, 7,000 and 8,000 steps at both sample counts, and the change over the last quarter.
"""
import json
import sys
from pathlib import Path

import torch


def records(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind and r["task"] == 0]


def main(recheck: str, original: str) -> None:
    print("| seed | same training (losses, weights) | samples | 6,000 | 7,000 | 8,000 | change 6,000 -> 8,000 "
          "| converged (< 10 %) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for run in sorted(Path(recheck).glob("s[0-9]")):
        seed = int(run.name[1:])
        new, old = run / "metrics.jsonl", Path(original) / f"tr-s{seed}" / "metrics.jsonl"
        losses_new = [(r["global_step"], r["loss"]) for r in records(new, "train")]
        losses_old = [(r["global_step"], r["loss"]) for r in records(old, "train")]
        w_new = torch.load(Path(recheck) / f"task1-s{seed}.pt", map_location="cpu", weights_only=False)["model"]
        w_old = torch.load(Path(original) / f"task1-s{seed}.pt", map_location="cpu", weights_only=False)["model"]
        same_w = w_new.keys() == w_old.keys() and all(torch.equal(w_new[k], w_old[k]) for k in w_new)
        same = f"{'yes' if losses_new == losses_old else 'NO'} ({len(losses_new)}), {'yes' if same_w else 'NO'}"
        for label, path, n in (("1,500", new, 1500), ("300", old, 300)):
            curve = {r["in_task_step"]: r["fid"] for r in records(path, "curve")}
            pts = [curve.get(s) for s in (6000, 7000, 8000)]
            change = pts[2] / pts[0] - 1
            cells = " | ".join(f"{v:.1f}" for v in pts)
            print(f"| {seed} | {same if n == 1500 else ''} | {label} | {cells} | {100 * change:+.0f} % "
                  f"| {'yes' if abs(change) < 0.1 else 'no'} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
