"""Has a run's final network collapsed to a constant output? For each run folder (its checkpoint.pt, after the last
task) and each of TASKS: the loss on 512 held-out windows of the task (fixed t and noise), the loss of predicting the
task's mean action on the same windows, and the std of the network's output across the windows (averaged over its
entries; a collapsed network's is near 0). From the repository root, seconds per run:
    python results/cw10_medium_cpu/collapse.py RUN [RUN ...] [--tasks window-close,peg-unplug-side]
adam_carried/README.md found finetune's network collapsed when Adam's moments ran on across tasks.
"""
import argparse
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import cw10_data  # noqa: E402
import diffusion  # noqa: E402
import train_cw10  # noqa: E402

def held_out_windows(sched, data):
    """512 fixed windows of a task with fixed t and noise: (x0, cond, t, eps)."""
    g = torch.Generator().manual_seed(123)
    return diffusion.with_noise(sched, data.sample(512, g), g)


def measure(model, sched, held):
    """(loss on the held-out windows, loss of their mean action, std of the output across them averaged over its
    entries)."""
    x0, _, t, eps = held
    with torch.no_grad():
        out = model(diffusion.q_sample(sched, x0, t, eps), t, held[1])
        loss = float(diffusion.batch_loss(model, sched, held).mean())
    return loss, float(((x0 - x0.mean(0)) ** 2).mean()), float(out.std(0).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--tasks", default="window-close,peg-unplug-side")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| run | task | held-out loss | mean-action loss | output std |\n|---|---|---:|---:|---:|")
    for run in args.runs:
        cfg = train_cw10.Config(**json.load(open(os.path.join(run, "config.json"))))
        cfg = dataclasses.replace(cfg, data_dir=train_cw10.Config.data_dir)
        sched = diffusion.Schedule(cfg.train_timesteps, prediction=cfg.prediction)
        lo, hi = cw10_data.obs_bounds(cw10_data.make_env(train_cw10.task_list(cfg)[0], cfg.max_path_length))
        model = train_cw10.build_model(cfg, "cpu")
        model.load_state_dict(torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)["model"])
        model.eval()
        for task in args.tasks.split(","):
            held = held_out_windows(sched, cw10_data.task_dataset(cfg, task, lo, hi, "cpu"))
            loss, mean_loss, std = measure(model, sched, held)
            print(f"| {os.path.basename(run.rstrip('/'))} | {task} | {loss:.4f} | {mean_loss:.4f} | {std:.4f} |")


if __name__ == "__main__":
    main()
