"""How much the shapes FID-proxy moves when its classifier's fit starts from weights scaled by 1 + eps.

    python results/imagenet_small_cpu/round_off.py    # the table of proxy_v1.md; ~9 min beside two runs

The classifier is fitted as train_imagenet.py --preset small fits it (image_data.classifier_set, seed 0, 10 epochs),
in float32 (the proxy's version 1) and in float64 (version 2), once as is and once with every initial weight scaled
by 1 + eps; both versions then score the same four image sets against Task 1's held-out images (FID-proxy). A ratio
far from 1 at an eps near the fit's machine epsilon (float32 1.2e-7, float64 2.2e-16) means two machines whose
SIMD round-off differs get different instruments.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import fid  # noqa: E402
import fid_networks  # noqa: E402
import image_data  # noqa: E402
import train_imagenet  # noqa: E402


def fitted(x, y, dtype, eps):
    """ClassifierFeatures.fit in dtype, its initial weights scaled by 1 + eps."""
    net = fid_networks.ClassifierFeatures.fit(x, y, dtype=dtype, init_scale=1 + eps)
    return fid.FeatureExtractor(net, "classifier", net.dim, "cpu")


def main():
    torch.set_num_threads(1)
    cfg = train_imagenet.Config(**train_imagenet.PRESETS["small"])
    x, y = image_data.classifier_set(cfg)
    _, held = image_data.load_data(cfg)
    task1 = held.images[np.isin(held.labels, np.arange(5))]                      # (300, 3, 16, 16) Task 1
    task2 = held.images[np.isin(held.labels, np.arange(5, 10))]
    rng = np.random.default_rng(0)
    noisy = lambda im, s: np.clip(im + rng.normal(0, s * 255, im.shape), 0, 255).astype(np.uint8)  # noqa: E731
    a, ref = task1[0::2], task1[1::2]                                             # 150 vs 150, same classes
    sets = {"real": a, "noise .03": noisy(a, 0.03), "noise .1": noisy(a, 0.1), "Task 2": task2[0::2]}

    def scores(ext):
        r = fid.Stats.from_features(ext.features(ref), ext.name)
        return [fid.fid_from_stats(fid.Stats.from_features(ext.features(v), ext.name), r).value for v in sets.values()]

    print("| fit | eps | " + " | ".join(sets) + " |\n|---|---|" + "---|" * len(sets))
    for dtype, name, epss in ((torch.float32, "float32 (v1)", (1e-6,)),
                              (torch.float64, "float64 (v2)", (1e-15, 1e-12, 1e-9, 1e-6))):
        base = scores(fitted(x, y, dtype, 0.0))
        print(f"| {name} | 0 | " + " | ".join(f"{v:.3f}" for v in base) + " |")
        for eps in epss:
            s = scores(fitted(x, y, dtype, eps))
            print(f"| {name} | {eps:g} | " + " | ".join(f"x {v / w:.6f}" for v, w in zip(s, base)) + " |")


if __name__ == "__main__":
    main()
