"""Why finetune learned 2 of its 10 tasks (medium preset, Adam moments carried across tasks): the final networks of
the finetune and replay runs, first as they are (loss on held-out windows of TASK against the loss of predicting the
mean action, and how much the output varies across the batch), then trained on TASK for 500 steps of the preset's
schedule from (a) finetune's weights + its Adam state, (b) finetune's weights + a fresh Adam, (c) replay's weights +
its Adam, (d) a fresh init. From the repository root (one torch thread, about 10 minutes):
    python results/cw10_medium_cpu/adam_carried/plasticity.py FINETUNE_RUN REPLAY_RUN [TASK]
FINETUNE_RUN / REPLAY_RUN: run folders of the medium preset with --no-reset-optimizer (checkpoint.pt after Task 10).
"""
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import cw10_data  # noqa: E402
import diffusion  # noqa: E402
import experiment  # noqa: E402
import meta_baselines  # noqa: E402
import train_cw10  # noqa: E402
from collapse import held_out_windows, measure  # noqa: E402

torch.set_num_threads(1)
ft_run, rp_run, task = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "window-close")
cfg = dataclasses.replace(train_cw10.Config(**train_cw10.PRESETS["medium"]), method="finetune")
lo, hi = cw10_data.obs_bounds(cw10_data.make_env(train_cw10.task_list(cfg)[0], cfg.max_path_length))
data = cw10_data.task_dataset(cfg, task, lo, hi, "cpu")
sched = diffusion.Schedule(cfg.train_timesteps, prediction=cfg.prediction)
held = held_out_windows(sched, data)  # fixed held-out windows, t and noise
print(f"{task}: loss of the mean action {measure(train_cw10.build_model(cfg, 'cpu'), sched, held)[1]:.4f}")


def held_out(model):
    """(loss on the held-out windows, std of the output across them): collapse.measure."""
    loss, _, std = measure(model, sched, held)
    return loss, std


def build(run):
    torch.manual_seed(0)
    model = train_cw10.build_model(cfg, "cpu")
    learner = meta_baselines.make_learner("finetune", model, sched, cfg)
    ck = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False) if run else None
    if ck:
        model.load_state_dict(ck["model"])
    return model, learner, ck


for name, run, keep in [("finetune weights + its Adam", ft_run, True), ("finetune weights + fresh Adam", ft_run, False),
                        ("replay weights + its Adam", rp_run, True), ("fresh init", None, False)]:
    model, learner, ck = build(run)
    if keep:
        learner.opt.load_state_dict(ck["learner"]["opt"])
    loss0, std0 = held_out(model)
    losses = []
    for s in range(500):
        experiment.set_lr(learner, cfg, s, 500)
        learner.step(data.sample(cfg.batch_size, experiment.generator(7, 8, s, 0)), None,
                     experiment.generator(7, 8, s, 1))
        if (s + 1) % 100 == 0:
            losses.append(held_out(model)[0])
    print(f"{name}: before loss {loss0:.4f}, output std {std0:.4f}; held-out loss at 100..500 steps "
          + " ".join(f"{v:.4f}" for v in losses) + f"; output std after {held_out(model)[1]:.4f}", flush=True)
