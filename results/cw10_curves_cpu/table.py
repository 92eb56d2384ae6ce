"""The single-task curve table of both prediction types: python results/cw10_curves_cpu/table.py RUN_ROOT [LANE ...]

RUN_ROOT holds lane.sh's folders LANE_TASK (e.g. runs/curves/eps_hammer). One row per CW10 task in the paper's
order, for each lane the success at every curve point (metrics.jsonl "curve" records) and training seconds per step
(timing.json); then per lane the mean at each point and how many tasks reach 0.5. Default lanes: eps x0.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from cw10_data import CW10  # noqa: E402


def curve(run):
    """{in-task step: success} and seconds per training step of one run folder ({} and None if absent)."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return {}, None
    with open(path) as f:
        points = {r["in_task_step"]: r["success"] for r in map(json.loads, f) if r["kind"] == "curve"}
    sps = None
    if os.path.exists(os.path.join(run, "timing.json")):
        with open(os.path.join(run, "timing.json")) as f:
            sps = json.load(f)["s_per_step"]
    return points, sps


def main(root, lanes):
    runs = {(lane, task): curve(os.path.join(root, f"{lane}_{task}")) for lane in lanes for task in CW10}
    points = sorted({p for c, _ in runs.values() for p in c})
    head = " | ".join(f"{lane} {p}" for lane in lanes for p in points)
    print(f"| task | {head} | " + " | ".join(f"{lane} s/step" for lane in lanes) + " |")
    print("|---|" + "---|" * (len(lanes) * (len(points) + 1)))
    for task in CW10:
        cells = [f"{runs[lane, task][0][p]:.2f}" if p in runs[lane, task][0] else "" for lane in lanes for p in points]
        sps = [f"{runs[lane, task][1]:.3f}" if runs[lane, task][1] else "" for lane in lanes]
        print(f"| {task} | " + " | ".join(cells) + " | " + " | ".join(sps) + " |")
    summaries = (("mean", lambda v: f"{sum(v) / len(v):.2f}"), ("tasks >= 0.5", lambda v: f"{sum(x >= 0.5 for x in v)}"))
    for label, fn in summaries:
        cells = []
        for lane in lanes:
            for p in points:
                v = [runs[lane, t][0][p] for t in CW10 if p in runs[lane, t][0]]
                cells.append(f"{fn(v)} ({len(v)})" if v else "")
        print(f"| {label} | " + " | ".join(cells) + " |" + " |" * len(lanes))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["eps", "x0"])
