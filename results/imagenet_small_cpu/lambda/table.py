"""λ at the small preset, seed 0: AFID-proxy, forgetting, each task's own score, Table 2's +10/20 % steps after Task 2
and the median ‖C‖/‖A‖ of Tasks 2-4, one row per run (replay = tr without the penalty).

    python results/imagenet_small_cpu/lambda/table.py runs/imagenet-small/replay-s0 runs/imagenet-small-lam/tr-lam*-s0 \
        runs/imagenet-small/tr-s0 > results/imagenet_small_cpu/lambda/table.md
"""
import json
import statistics
import sys
from pathlib import Path


def main(run_dirs):
    print("| run | λ | AFID-proxy | F | own score T1-T4 (R[i][i]) | T1 after T4 | +10 % / +20 % after T2 | ‖C‖/‖A‖ T2, T3, T4 |")
    print("|---|---:|---:|---:|---|---:|---|---|")
    for d in run_dirs:
        d = Path(d)
        s, cfg = json.loads((d / "summary.json").read_text()), json.loads((d / "config.json").read_text())
        lam = cfg["lam"] if s["method"] == "tr" else 0
        recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        ratios = []
        for k in (1, 2, 3):
            r = [x["norm_C"] / x["norm_A"] for x in recs if x["kind"] == "train" and x["task"] == k and "norm_C" in x]
            ratios.append(f"{statistics.median(r):.2f}" if r else "—")
        rc = s["reconvergence"]["T1"]
        steps = " / ".join("—" if rc[t]["T2"] is None else str(rc[t]["T2"]) for t in ("0.1", "0.2"))
        own = ", ".join(f"{s['R'][i][i]:.1f}" for i in range(len(s["R"])))
        print(f"| {d.name} | {lam:g} | {s['average']:.1f} | {s['forgetting']:.1f} | {own} | {s['R'][-1][0]:.1f} "
              f"| {steps} | {', '.join(ratios)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
