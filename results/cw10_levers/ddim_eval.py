"""Success of finished single-task CW10 runs against the number of DDIM steps at evaluation.

    python results/cw10_levers/ddim_eval.py --ddim 5,10,20 --episodes 40 RUN [RUN ...]

RUN is a train_cw10.py output folder (config.json + checkpoint.pt of a finished run). Each run's final weights are
evaluated on the run's last task with the same evaluation episodes (cw10_data.EPISODES_EVAL) and the same
generator key for every DDIM count; prints one markdown row per run: success and seconds per evaluation.
Rollouts run in this process (1 torch thread unless --threads).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import cw10_data  # noqa: E402
import diffusion  # noqa: E402
import experiment  # noqa: E402
import train_cw10  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--ddim", default="5,10,20")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(v) for v in args.ddim.split(",")]
    print("| run | task | steps | " + " | ".join(f"DDIM {c}" for c in counts) + " | s/eval at each |")
    print("|---|---|---|" + "---|" * len(counts) + "---|")
    for run in args.runs:
        cfg = train_cw10.Config(**json.load(open(os.path.join(run, "config.json"))))
        ck = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=False)
        task = train_cw10.task_list(cfg)[-1]
        model = train_cw10.build_model(cfg, torch.device("cpu"))
        model.load_state_dict(ck["model"])
        sched = diffusion.Schedule(cfg.train_timesteps, prediction=cfg.prediction)
        envs = cw10_data.EnvPool(0, cfg.max_path_length)
        lo, hi = cw10_data.obs_bounds(cw10_data.make_env(task, cfg.max_path_length))
        scores, secs = [], []
        for c in counts:
            sub = dataclasses.replace(cfg, ddim_steps=c, rollout_batch=min(args.episodes, 20))
            g = experiment.generator(cfg.seed, 99, 0, train_cw10.STREAM_EVAL, 0)
            t0 = time.perf_counter()
            ok, _ = cw10_data.run_episodes(model, sched, sub, task, args.episodes, cw10_data.EPISODES_EVAL, g, envs,
                                           lo, hi, torch.device("cpu"))
            secs.append(time.perf_counter() - t0)
            scores.append(float(ok.mean()))
        envs.close()
        print(f"| {os.path.basename(run.rstrip('/'))} | {task} | {ck['state']['global_step']} | "
              + " | ".join(f"{v:.2f}" for v in scores) + " | " + " / ".join(f"{s:.0f}" for s in secs) + " |",
              flush=True)


if __name__ == "__main__":
    main()
