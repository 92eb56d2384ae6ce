"""Markdown table of single-task learning curves: python results/cw10_single_task_cpu/curve_table.py RUN_ROOT...

Each RUN_ROOT holds one folder per run (a train_cw10.py run with --tasks TASK --curve ...); prints one row per
run: its folder name, task, model, lr (and schedule), batch, demos, success at every curve point (from
metrics.jsonl "curve" records), the episodes behind each point, training seconds per step and the run's wall
minutes (from timing.json, written by timed_run.py).
"""
import json
import os
import sys


def rows(root):
    for name in sorted(os.listdir(root)):
        run = os.path.join(root, name)
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
        yield name, cfg, curve, timing


def main(roots):
    table = [row for root in roots for row in rows(root)]
    points = sorted({p for _, _, curve, _ in table for p in curve})
    print("| run | task | model | lr | batch | demos | DDIM | episodes | " + " | ".join(f"{p}" for p in points)
          + " | s/step | run min |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(points) + "---|---|")
    for name, cfg, curve, timing in table:
        lr = f"{cfg['lr']:g}" + (f" cosine (warm-up {cfg['lr_warmup']})" if cfg.get("lr_schedule") == "cosine" else "")
        cells = [f"{curve[p]:.2f}" if p in curve else "" for p in points]
        sps = f"{timing['s_per_step']:.3f}" if timing else ""
        total = f"{timing['total_s'] / 60:.0f}" if timing else ""
        print(f"| {name} | {cfg['tasks']} | {cfg['model']} | {lr} | {cfg['batch_size']} | {cfg['demos_per_task']} | "
              f"{cfg['ddim_steps']} | {cfg['curve_episodes']} | " + " | ".join(cells) + f" | {sps} | {total} |")


if __name__ == "__main__":
    main(sys.argv[1:])
