"""The rank-1 diagnostics (the paper's premise, Section 3.2) of trained single-task CW10 runs, per run folder.

    python results/cw10_curves_cpu/rank1.py --samples 512 --diag-samples 256 RUN [RUN ...] > rank1.md

For each run: its final weights (checkpoint.pt), its own loss (the run's --prediction), the Fisher of its task
estimated as a task boundary estimates it (fisher.estimate_on_task: real training windows, fresh t and eps, eval
mode), and the diagnostics fisher.py logs at every boundary: rank1_share = mean (u^T g_i)^2 / mean ||g_i||^2 (1 when
every per-sample gradient lies along the rank-1 direction u) and mean cos(g_i, mu), overall and per diffusion-step
band. One markdown row per run.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import cw10_data  # noqa: E402
import diffusion  # noqa: E402
import experiment  # noqa: E402
import fisher  # noqa: E402
import train_cw10  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--samples", type=int, default=512, help="Fisher samples (training windows)")
    ap.add_argument("--diag-samples", type=int, default=256, help="per-sample gradients behind the diagnostics")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bands = [f"{lo}-{hi}" for lo, hi in fisher.T_BANDS]
    print(f"Fisher from {args.samples} windows, diagnostics from {args.diag_samples} per-sample gradients\n")
    print("| run | prediction | task | rho | rank1_share | " + " | ".join(f"share t {b}" for b in bands)
          + " | mean cos |")
    print("|---|---|---|---|---|" + "---|" * len(bands) + "---|")
    for run in args.runs:
        with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
            cfg = train_cw10.Config(**json.load(f))
        task = train_cw10.task_list(cfg)[0]
        model = train_cw10.build_model(cfg, torch.device("cpu"))
        model.load_state_dict(torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu",
                                         weights_only=False)["model"])
        lo, hi = cw10_data.obs_bounds(cw10_data.make_env(task, cfg.max_path_length))
        data = cw10_data.task_dataset(cfg, task, lo, hi, torch.device("cpu"))
        sched = diffusion.Schedule(cfg.train_timesteps, prediction=cfg.prediction)
        F = fisher.estimate_on_task(model, sched, data.get, len(data), args.samples, cfg.batch_size,
                                    experiment.generator(cfg.seed, 0, train_cw10.STREAM_FISHER),
                                    experiment.generator(cfg.seed, 0, train_cw10.STREAM_FISHER, 1),
                                    diag_samples=args.diag_samples)
        d = F.diagnostics
        cells = [f"{d['bands'][b]['rank1_share']:.3f}" if b in d["bands"] else "" for b in bands]
        print(f"| {os.path.basename(run.rstrip('/'))} | {cfg.prediction} | {task} | {F.rho:.3g} | "
              f"{d['rank1_share']:.3f} | " + " | ".join(cells) + f" | {d['mean_cos']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
