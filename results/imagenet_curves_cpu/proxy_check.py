"""Are fid.py's proxies measures on the shapes data? Prints a markdown table (about 2 min on one core).

    python results/imagenet_curves_cpu/proxy_check.py > results/imagenet_curves_cpu/proxy_check.txt

Reference: the image small preset's Task 1 as a run scores it: 300 held-out 16x16 images of classes 0-4 (60 each).
Scored against it, 300 images each: training-split images of the same classes with Gaussian pixel noise or
Gaussian blur of decreasing strength (a measure must fall monotonically to the real-vs-real value), the next
task's classes (the same red, other shapes: what a finetuned model draws for Task 1's labels after Task 2), the
third task's (the same shapes, orange), one class only (mode collapse), uniform noise, and DDIM-20 samples of an
untrained unet2d_mini (seed 0). Columns: the random-conv proxy (proxy-randconv-v1) and the classifier proxy the
shapes runs use (proxy-classifier-v1, fitted as train_imagenet.py fits it for the small preset).
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import diffusion  # noqa: E402
import fid  # noqa: E402
import image_data  # noqa: E402
import train_imagenet  # noqa: E402
import unet  # noqa: E402

NOISE = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0)  # std in [-1, 1] units
BLUR = (3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.0)    # Gaussian sigma in pixels of the 16 x 16 image


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 3, S, S), reflect padding."""
    if sigma == 0:
        return x
    r = int(3 * sigma + 1)
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)                                                   # (N*3, 1, S, S)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def main():
    torch.set_num_threads(1)
    cfg = train_imagenet.Config(**train_imagenet.PRESETS["small"])
    extractors = [fid.FeatureExtractor.load(None, "cpu", force_proxy=True),
                  fid.FeatureExtractor.classifier_proxy(*image_data.classifier_set(cfg), "cpu")]

    def shapes(split, first, n):  # classes first .. first+4, n each, (5 n, 3, 16, 16) in [-1, 1]
        s = image_data.make_shapes(0, first + 5, n, split)
        return image_data.to_float(image_data.downsample(s.images[first * n:], 16), "cpu")

    ref_images, real, g = shapes(1, 0, 60), shapes(0, 0, 60), torch.Generator().manual_seed(0)
    sets = {f"real + noise std {s}": (real + s * torch.randn(real.shape, generator=g)).clamp(-1, 1) for s in NOISE}
    sets.update({f"real, blur sigma {s} px" if s else "real (training split), no blur": blur(real, s) for s in BLUR})
    sets["task 2's classes (same red, other shapes)"] = shapes(0, 5, 60)
    sets["task 3's classes (Task 1's shapes, orange)"] = shapes(0, 10, 60)
    sets["one class only (red disc): mode collapse"] = shapes(0, 0, 300)[:300]
    sets["uniform noise"] = torch.rand(real.shape, generator=g) * 2 - 1
    torch.manual_seed(0)
    model = unet.unet2d_mini(num_classes=20)
    sets["untrained unet2d_mini, DDIM 20"] = train_imagenet.generate(
        model, diffusion.Schedule(), torch.arange(300) % 5, 16, 20, torch.Generator().manual_seed(0), 300, "cpu")
    scores = {}
    for ext in extractors:
        ref = fid.Stats.from_features(ext.features(ref_images), ext.name)
        scores[ext.name] = {k: fid.fid_from_stats(fid.Stats.from_features(ext.features(x), ext.name), ref,
                                                  fast=True).value for k, x in sets.items()}
    print("| 300 images scored against 300 held-out of Task 1 (16x16) | " + " | ".join(scores) + " |")
    print("|---|" + "---:|" * len(scores))
    for k in sets:
        print(f"| {k} | " + " | ".join(f"{v[k]:.4g}" for v in scores.values()) + " |")


if __name__ == "__main__":
    main()
