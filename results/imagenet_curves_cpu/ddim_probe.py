"""FID-proxy of a finished run's Task 1 at several DDIM step counts, and one grid row per count.

    python results/imagenet_curves_cpu/ddim_probe.py RUN 10,20,50 OUT.png

RUN is a run folder of train_imagenet.py (its checkpoint.pt). The samples use the same noise for every count
(generator seed 0), 300 class-balanced images of Task 1 scored against its held-out images as the run scores them
(train_imagenet.Evaluator), and the share of pixels at |x| > 0.99 (saturated by DDIM's x0 clipping) is printed.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import diffusion  # noqa: E402
import fid  # noqa: E402
import image_data  # noqa: E402
import train_imagenet  # noqa: E402


def main(run: str, counts: str, out: str) -> None:
    torch.set_num_threads(1)
    ck = torch.load(Path(run) / "checkpoint.pt", weights_only=False)
    cfg = train_imagenet.Config(**ck["config"])
    model = train_imagenet.build_model(cfg, "cpu")
    model.load_state_dict(ck["model"])
    ext = fid.FeatureExtractor.load(None, "cpu", force_proxy=True)
    evaluator = train_imagenet.Evaluator(cfg, ext, image_data.load_data(cfg)[1],
                                         diffusion.Schedule(prediction=cfg.prediction), "cpu")
    rows = []
    print("| DDIM steps | Task 1 FID-proxy | saturated pixels |\n|---:|---:|---:|")
    for steps in map(int, counts.split(",")):
        cfg.ddim_steps = steps
        result, x = evaluator.score(model, 0, 300, torch.Generator().manual_seed(0))
        print(f"| {steps} | {result.value:.2f} | {(x.abs() > 0.99).float().mean().item():.3f} |", flush=True)
        rows.append([evaluator.grid_images(x)])
    image_data.save_grid(out, rows, [f"DDIM {c}" for c in counts.split(",")], ["Task 1 samples"], per_row=10)


if __name__ == "__main__":
    main(*sys.argv[1:4])
