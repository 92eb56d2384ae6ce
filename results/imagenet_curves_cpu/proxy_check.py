"""Is fid.py's proxy (proxy-randconv-v1) a measure on the shapes data? Prints a markdown table.

    python results/imagenet_curves_cpu/proxy_check.py            # ~1 min on one core

Reference: 1,000 held-out images of shapes task 1 (classes 0-9, 100 each), as in the learning-curve runs. Scored
against it, 300 images each: training-split images of the same classes with Gaussian pixel noise or Gaussian blur
of decreasing strength (the score must fall monotonically to the real-vs-real value), the next task's classes
(another colour), one class only (mode collapse), uniform noise, and DDIM-20 samples of untrained UNets (seed 0).
Trained models' scores are in the learning-curve table (README.md), the same protocol.
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

NOISE = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.0)  # std in [-1, 1] units
BLUR = (3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.0)          # Gaussian sigma in pixels of the S x S image


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
    ext = fid.FeatureExtractor.load(None, "cpu", force_proxy=True)
    rows = {}
    for size in (16, 32):
        shapes = lambda split, first, n: image_data.to_float(image_data.downsample(  # noqa: E731
            image_data.make_shapes(0, first + 10, n, split).images[first * n:], size), "cpu")  # (10 n, 3, S, S)
        ref = fid.Stats.from_features(ext.features(shapes(1, 0, 100)), ext.name)
        real = shapes(0, 0, 30)
        g = torch.Generator().manual_seed(0)

        def score(x):
            return fid.fid_from_stats(fid.Stats.from_features(ext.features(x.clamp(-1, 1)), ext.name), ref,
                                      fast=True).value

        noise = [score(real + s * torch.randn(real.shape, generator=g)) for s in NOISE]
        blurred = [score(blur(real, s)) for s in BLUR]
        assert all(a > b for a, b in zip(noise, noise[1:])), f"noise not monotone at {size}: {noise}"
        assert all(a > b for a, b in zip(blurred, blurred[1:])), f"blur not monotone at {size}: {blurred}"
        for s, v in zip(NOISE, noise):
            rows.setdefault(f"real + noise std {s}", {})[size] = v
        for s, v in zip(BLUR, blurred):
            rows.setdefault(f"real, blur sigma {s} px" if s else "real (training split), no blur", {})[size] = v
        rows.setdefault("task 2's classes (orange, not red)", {})[size] = score(shapes(0, 10, 30))
        one = image_data.to_float(image_data.downsample(image_data.make_shapes(0, 1, 300, 0).images, size), "cpu")
        rows.setdefault("one class only (red disc): mode collapse", {})[size] = score(one)
        rows.setdefault("uniform noise", {})[size] = score(torch.rand(real.shape, generator=g) * 2 - 1)
        for name in ("tiny", "mini"):
            torch.manual_seed(0)
            model = getattr(unet, f"unet2d_{name}")(num_classes=50)
            x = train_imagenet.generate(model, diffusion.Schedule(), torch.arange(300) % 10, size, 20,
                                        torch.Generator().manual_seed(0), 300, "cpu")
            rows.setdefault(f"untrained unet2d_{name}, DDIM 20", {})[size] = score(x)
    print("| images scored against held-out task 1 | 16x16 | 32x32 |\n|---|---:|---:|")
    for name, v in rows.items():
        print(f"| {name} | {v[16]:.3f} | {v[32]:.3f} |")


if __name__ == "__main__":
    main()
