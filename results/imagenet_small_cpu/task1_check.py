"""Has Task 1 converged? Run by run: Task 1's FID-proxy curve at 3/4 of Task 1 and at its end, and the change
between them (the test asked of the preset: converged if |change| < 10 %), with the last quarter's points.
Reads summary.json only.

    python results/imagenet_small_cpu/task1_check.py results/imagenet_small_cpu/runs/*-s? \
        > results/imagenet_small_cpu/task1_check.md
"""
import json
import sys
from pathlib import Path


def main(run_dirs):
    if not run_dirs:
        print("error: give run folders (RUN/summary.json)", file=sys.stderr)
        raise SystemExit(2)
    print("| run | Task 1 steps | FID-proxy at 3/4 | at end | change | last-quarter points | converged (< 10 %) |")
    print("|---|---:|---:|---:|---:|---|---|")
    for d in run_dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        n = s["transitions"][0] if s["transitions"] else max(g for g, _ in s["task1_curve"])
        curve = {g: v for g, v in s["task1_curve"] if g <= n}
        q3 = max(g for g in curve if g <= 3 * n // 4)
        quarter = [f"{curve[g]:.1f}" for g in sorted(curve) if g >= q3]
        change = curve[n] / curve[q3] - 1
        print(f"| {s['method']} s{s['seed']} | {n} | {curve[q3]:.1f} (step {q3}) | {curve[n]:.1f} "
              f"| {100 * change:+.0f} % | {', '.join(quarter)} | {'yes' if abs(change) < 0.1 else 'no'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
