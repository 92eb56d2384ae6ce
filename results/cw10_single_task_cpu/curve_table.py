"""Markdown table of single-task learning curves: python results/cw10_single_task_cpu/curve_table.py RUN_ROOT...

Each RUN_ROOT holds one folder per task (a train_cw10.py run with --tasks TASK --curve ...); prints one row per
(run root, task): success at every curve point (from metrics.jsonl "curve" records), the episodes behind each
point, training seconds per step and the run's wall minutes (from timing.json, written by timed_run.py).
"""
import json
import os
import sys


def rows(root):
    for task in sorted(os.listdir(root)):
        run = os.path.join(root, task)
        if not os.path.exists(os.path.join(run, "metrics.jsonl")):
            continue
        with open(os.path.join(run, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        with open(os.path.join(run, "config.json")) as f:
            cfg = json.load(f)
        curve = {r["in_task_step"]: r["success"] for r in records if r["kind"] == "curve"}
        timing = {}
        if os.path.exists(os.path.join(run, "timing.json")):
            with open(os.path.join(run, "timing.json")) as f:
                timing = json.load(f)
        yield task, cfg, curve, timing


def main(roots):
    points = [250, 500, 1000, 2000, 4000]
    print("| task | model | batch | demos | DDIM | episodes | " + " | ".join(f"{p}" for p in points)
          + " | s/step | run min |")
    print("|---|---|---|---|---|---|" + "---|" * len(points) + "---|---|")
    for root in roots:
        for task, cfg, curve, timing in rows(root):
            cells = [f"{curve[p]:.2f}" if p in curve else "" for p in points]
            sps = f"{timing['s_per_step']:.3f}" if timing else ""
            total = f"{timing['total_s'] / 60:.0f}" if timing else ""
            print(f"| {task} | {cfg['model']} | {cfg['batch_size']} | {cfg['demos_per_task']} | {cfg['ddim_steps']} | "
                  f"{cfg['curve_episodes']} | " + " | ".join(cells) + f" | {sps} | {total} |")


if __name__ == "__main__":
    main(sys.argv[1:])
