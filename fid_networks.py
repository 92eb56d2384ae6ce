"""The networks whose features fid.py compares (paper Section 4.1: FID): the FID Inception v3 and two proxies.

Why a module of its own: fid.py is the Frechet distance, the statistics and the command line; these ~280 lines are
network architecture that the FID arithmetic never reads (fid.py was 664 lines with them).

Feature extractors (fid.FeatureExtractor.load picks one)
    "inception"          the FID Inception v3 (TF 2015-12-05 graph ported by pytorch-fid), written
                         here module for module so that pytorch-fid's file
                         ``pt_inception-2015-12-05-6726825d.pth`` loads with strict key matching.
                         Input in [0, 1] -> bilinear resize to 299 (align_corners=False) -> 2x - 1.
                         Looked up at ``weights=PATH`` or in the torch hub cache
                         ($TORCH_HOME/hub/checkpoints/, default ~/.cache/torch/hub/checkpoints/).
    "proxy-randconv-v1"  used only when no weights file is found: a fixed random-weight conv net
                         (3 conv stages, weights drawn from NumPy's frozen legacy RandomState(0)
                         stream, so identical on every machine) pooled to 256 features. Scores from
                         it are printed as "FID-proxy ... not comparable to published FID" and the
                         result carries ``is_proxy=True``. It ranks degradations sensibly (blur,
                         noise; tests/test_fid.py) but its scale means nothing outside this repo.
    "proxy-classifier-v2"  the shapes dataset's proxy (train_imagenet.py, when no weights file is
                         found): a small CNN trained for a few seconds, from a fixed seed, to classify
                         the run's own training images; features = its 128-d penultimate layer. Like
                         Inception it is a classifier of the data's classes, so it sees shape: the
                         random-conv proxy, a texture statistic, scored Task 1's labels drawn as Task
                         2's shapes (the forgetting a finetuned model shows) better than Task 1 itself
                         (results/imagenet_curves_cpu/README.md). Also labelled FID-proxy.
                         Fitted and run in float64, because the fit amplifies round-off about 10^7-fold:
                         fitted in float32 (v1), initial weights scaled by 1 + 1e-6 moved scores by
                         10-60 %, and two CPUs (different SIMD round-off) scored the same model 17-23 %
                         apart; in float64 a 1e-12 scaling moves no score in its 6th digit
                         (results/imagenet_small_cpu/proxy_v1.md).

Deviations from pytorch-fid
- The 1008-class ``fc`` layer of the weights file is kept as a module so that the file loads with
  strict key checking (a wrong or truncated file is caught); it is never called, features are pool3.
- One ``FIDInceptionE`` class with a ``pool`` switch stands for pytorch-fid's FIDInceptionE_1
  (Mixed_7b, average pool without padded zeros) and FIDInceptionE_2 (Mixed_7c, max pool).
- BatchNorm ``num_batches_tracked`` buffers are filled in when the file lacks them (they do not
  enter the eval-mode forward pass).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's FID_WEIGHTS_URL file name

# -----------------------------------------------------------------------------
# FID Inception v3 (Szegedy et al. 2016; layout and key names of torchvision's Inception3 as patched
# by pytorch-fid's fid_inception_v3: aux classifier removed, 1008-class fc, FID pooling patches)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=0.001) -> ReLU; keys '<name>.conv.*', '<name>.bn.*'."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    # TF's average pool ignores the padded zeros (pytorch-fid's "Patch" comment)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d: (B, c_in, 35, 35) -> (B, 224 + pool_features, 35, 35)."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction): (B, 288, 35, 35) -> (B, 768, 17, 17)."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b-e, factorised 7x7: (B, 768, 17, 17) -> (B, 768, 17, 17)."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction): (B, 768, 17, 17) -> (B, 1280, 8, 8)."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (pool="avg", pytorch-fid's FIDInceptionE_1) and Mixed_7c (pool="max", FIDInceptionE_2):
    (B, c_in, 8, 8) -> (B, 2048, 8, 8)."""

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)            # (B, 768, 8, 8)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)          # (B, 768, 8, 8)
        # Mixed_7c's max pool is a quirk of the TF graph that FID is defined on (pytorch-fid comment)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> pool3 features (B, 2048). Always run in eval mode."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # in the weights file; never called (features are pool3)
        self.eval()

    def forward(self, x):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        x = 2 * x - 1                                                                 # [0, 1] -> [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))             # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                                  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                                 # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                                  # (B, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)                                     # ... -> (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))                                                     # pool3: (B, 2048)

    def train(self, mode: bool = True):
        return super().train(False)  # BatchNorm must use the stored statistics (lucidrains #234)


def load_inception_state(model: FIDInceptionV3, path) -> None:
    """Strict load of pytorch-fid's weights file; ValueError naming the problem if it does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or unreadable file: zip, pickle and OS errors of every kind
        raise ValueError(f"{path} is not a readable torch weights file ({type(e).__name__})") from None
    own = model.state_dict()
    for key, value in own.items():                 # files written before torch 0.4.1 lack these buffers
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        raise ValueError(f"{path} is not the FID Inception v3 state dict: {len(missing)} missing keys "
                         f"{missing[:2]}, {len(unexpected)} unexpected {unexpected[:2]}, "
                         f"{len(bad_shape)} wrong shapes {bad_shape[:2]}")
    model.load_state_dict(state, strict=True)

# -----------------------------------------------------------------------------
# proxy extractor: fixed random conv net (used only when the Inception weights are absent)


class RandomConvFeatures(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> (B, 256): resize to 32x32, three 3x3 conv + ReLU stages
    (64, 96, 96 channels at 32, 16, 8 px; 2x2 average pooling between), each stage's activations
    averaged over space and concatenated. Weights ~ N(0, 2 / fan_in) from NumPy's legacy
    RandomState(seed) (its stream is frozen by NumPy's compatibility policy, NEP 19), biases 0.
    48 of the 64 first-stage filters have their spatial mean removed, so they see edges and
    texture only; the other 16 carry colour. With all 64 plain, the features are dominated by
    the images' colour variance and a blur of sigma 1 px scores like a held-out real set."""

    widths = (64, 96, 96)
    dc_free = 48  # first-stage filters with zero spatial mean (blind to flat colour, see docstring)

    def __init__(self, seed: int = 0):
        super().__init__()
        rng = np.random.RandomState(seed)
        c_in = 3
        for i, c_out in enumerate(self.widths):
            w = rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (c_in * 9))
            if i == 0:  # edge/texture detectors: remove the spatial mean of the first 48 filters
                w[:self.dc_free] -= w[:self.dc_free].mean(axis=(2, 3), keepdims=True)
            self.register_buffer(f"w{i}", torch.from_numpy(w).float())
            c_in = c_out
        self.dim = sum(self.widths)

    def forward(self, x):
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        x = 2 * x - 1                                                 # (B, 3, 32, 32) in [-1, 1]
        pooled = []
        for i in range(len(self.widths)):
            if i > 0:
                x = F.avg_pool2d(x, 2)                                # (B, C, H/2, W/2)
            x = F.relu(F.conv2d(x, getattr(self, f"w{i}"), padding=1))  # (B, C_i, H, W)
            pooled.append(x.mean(dim=(2, 3)))                         # (B, C_i)
        return torch.cat(pooled, dim=1)                               # (B, 256)

class ClassifierFeatures(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> (B, 128): the penultimate layer of a small CNN classifier, conv 3x3 + ReLU
    stages of 32, 32 | 64 | 128 channels with 2x2 average pooling between them, averaged over space; ``head`` maps
    the features to class logits. Built by ``fit`` on labelled images; then frozen like any extractor."""

    dim = 128

    def __init__(self, num_classes: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in
                                    ((3, 32), (32, 32), (32, 64), (64, 128))])
        self.head = nn.Linear(self.dim, num_classes)

    def forward(self, x):
        x = 2 * x - 1                                                     # (B, 3, H, W) in [-1, 1]
        for i, conv in enumerate(self.convs):
            if i >= 2:
                x = F.avg_pool2d(x, 2)                                    # stages 3, 4 at H/2, H/4
            x = F.relu(conv(x))
        return x.mean(dim=(2, 3))                                         # (B, 128)

    @classmethod
    def fit(cls, images: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = 10, batch: int = 128,
            lr: float = 2e-3, noise: float = 0.1, dtype=torch.float64, init_scale: float = 1.0) -> "ClassifierFeatures":
        """Train on uint8 images (N, 3, H, W) with int labels (N,): Adam, cross-entropy, `epochs` passes over
        fresh permutations, all randomness from `seed` (so every run of the same data gets the same network), all
        arithmetic in `dtype` (float64, so that every machine gets it too: the module docstring; float32 was v1).
        `init_scale` multiplies the initial weights (in `dtype`): how tests/test_fid.py and
        results/imagenet_small_cpu/round_off.py measure the fit's sensitivity to round-off."""
        g = torch.Generator().manual_seed(seed)
        classes, y_all = np.unique(labels, return_inverse=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = cls(len(classes)).to(dtype)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(init_scale)
        x_all, y_all = torch.from_numpy(images).to(dtype) / 255, torch.from_numpy(y_all)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            perm = torch.randperm(len(x_all), generator=g)
            for start in range(0, len(perm), batch):
                idx = perm[start:start + batch]
                x = x_all[idx]
                std = torch.rand(len(x), 1, 1, 1, generator=g).to(dtype) * noise          # per image, U(0, noise)
                x = (x + std * torch.randn(x.shape, generator=g).to(dtype)).clamp(0, 1)
                loss = F.cross_entropy(net.head(net(x)), y_all[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net.eval().requires_grad_(False)
