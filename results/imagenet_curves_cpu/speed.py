"""Wall time per training step (each method) and per DDIM sampling step for the image CPU presets' UNets.

    python results/imagenet_curves_cpu/speed.py --threads 1 [--models tiny,mini,small] [--sizes 16,32]

Median of 8 steps after 2 warm-up steps, batch 32 current (+ 32 replay for replay, tr, ftml, vrmcl), a random
rank-1 Fisher for ewc / tr (the step costs the same as with an estimated one); sampling: one forward pass of a
batch of 100 images (a DDIM step). Prints a markdown table.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import diffusion  # noqa: E402
import fisher  # noqa: E402
import meta_baselines  # noqa: E402
import replay  # noqa: E402
import unet  # noqa: E402


def step_ms(model_name: str, size: int, method: str, batch: int = 32, reps: int = 8) -> float:
    torch.manual_seed(0)
    model = getattr(unet, f"unet2d_{model_name}")(num_classes=50)
    sched, g = diffusion.Schedule(), torch.Generator().manual_seed(0)
    learner = meta_baselines.make_learner(method, model, sched, argparse.Namespace(lr=1e-3, lam=1.0))
    if learner.replay_loss_fn is not None:
        learner.replay_loss_fn.set_teacher(replay.frozen_copy(model))
    if meta_baselines.uses_fisher(method):
        theta = fisher.flat_params(model)
        mu = torch.randn(theta.shape, generator=g) * 1e-3
        learner.add_fisher(fisher.Rank1Fisher(mu, 1.0, float(mu.double() @ theta.double())))
    times = []
    for _ in range(reps + 2):
        x, y = torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 50, (batch,), generator=g)
        rb = (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 50, (batch,), generator=g))
        start = time.perf_counter()
        learner.step((x, y), rb if meta_baselines.uses_replay(method) else None, torch.Generator().manual_seed(1))
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times[2:])[reps // 2]


@torch.no_grad()
def forward_ms(model_name: str, size: int, n: int = 100) -> float:
    model = getattr(unet, f"unet2d_{model_name}")(num_classes=50).eval()
    x, t, y = torch.randn(n, 3, size, size), torch.full((n,), 500), torch.arange(n) % 50
    model(x, t, y)
    start = time.perf_counter()
    for _ in range(3):
        model(x, t, y)
    return 1000 * (time.perf_counter() - start) / 3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="tiny,mini,small")
    p.add_argument("--sizes", default="16,32")
    p.add_argument("--methods", default="finetune,ewc,replay,tr,ftml,vrmcl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch 32 (+32 replay)\n")
    print("| model | params | image | " + " | ".join(f"{m} ms/step" for m in methods) + " | DDIM step, 100 images |")
    print("|---|---:|---|" + "---:|" * (len(methods) + 1))
    for name in args.models.split(","):
        params = unet.count_parameters(getattr(unet, f"unet2d_{name}")(num_classes=50))
        for size in map(int, args.sizes.split(",")):
            cells = [f"{step_ms(name, size, m):.0f}" for m in methods]
            print(f"| unet2d_{name} | {params / 1e6:.2f}M | {size}x{size} | " + " | ".join(cells) +
                  f" | {forward_ms(name, size):.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
