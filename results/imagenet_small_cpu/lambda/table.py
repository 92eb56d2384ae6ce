"""λ sweeps, either experiment: average score, forgetting, each task's own score, Task 1 at the end, Table 2's two
strictest thresholds after Task 2 and the median ‖C‖/‖A‖ of every later task, one row per run (replay = tr
without the penalty).

    python results/imagenet_small_cpu/lambda/table.py runs/imagenet-small/replay-s0 runs/imagenet-small-lam/tr-lam*-s0 \
        runs/imagenet-small/tr-s0 > results/imagenet_small_cpu/lambda/table.md
    python results/imagenet_small_cpu/lambda/table.py runs/cw10-small/replay-s0 runs/cw10-small-lam/tr-lam* \
        runs/cw10-small/tr-s0 > results/cw10_small_cpu/lambda.md
"""
import json
import statistics
import sys
from pathlib import Path


def main(run_dirs):
    first = json.loads((Path(run_dirs[0]) / "summary.json").read_text())
    fid = first["score_name"] != "success"
    name, th = ("AFID-proxy", ("0.1", "0.2")) if fid else ("SR", ("0.99", "0.9"))
    labels = ("+10 %", "+20 %") if fid else ("99 %", "90 %")
    n = len(first["task_names"])
    later = ", ".join(f"T{k + 1}" for k in range(1, n))
    print(f"| run | λ | {name} | F | own score T1-T{n} (R[i][i]) | T1 after T{n} | {' / '.join(labels)} after T2 "
          f"| ‖C‖/‖A‖ {later} |")
    print("|---|---:|---:|---:|---|---:|---|---|")
    fmt = ".1f" if fid else ".2f"
    for d in run_dirs:
        d = Path(d)
        s, cfg = json.loads((d / "summary.json").read_text()), json.loads((d / "config.json").read_text())
        lam = cfg["lam"] if s["method"] == "tr" else 0
        recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        ratios = []
        for k in range(1, n):
            r = [x["norm_C"] / x["norm_A"] for x in recs if x["kind"] == "train" and x["task"] == k and "norm_C" in x]
            ratios.append(f"{statistics.median(r):.2f}" if r else "—")
        rc = s["reconvergence"]["T1"]
        steps = " / ".join("—" if rc[t]["T2"] is None else str(rc[t]["T2"]) for t in th)
        own = ", ".join(format(s["R"][i][i], fmt) for i in range(len(s["R"])))
        print(f"| {d.name} | {lam:g} | {s['average']:{fmt}} | {s['forgetting']:{fmt}} | {own} "
              f"| {s['R'][-1][0]:{fmt}} | {steps} | {', '.join(ratios)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
