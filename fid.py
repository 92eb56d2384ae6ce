"""Frechet Inception Distance (FID) for the ImageNet-32 experiment (paper Section 4.1, Table 1-2).

The paper scores each task's generator by FID (Heusel et al. 2017) against held-out images of that
task. This module writes both halves itself, because the usual packages (pytorch-fid, clean-fid,
torch-fidelity) download weights at run time and need torchvision, neither of which works offline:

    Frechet distance between N(mu1, S1) and N(mu2, S2)   (Dowson & Landau 1982; Heusel et al. 2017)
        d^2 = ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr sqrtm(S1 S2)
    with mu, S the mean and covariance (np.cov, rowvar=False) of 2048-d Inception pool3 features.

Numerics follow pytorch-fid's ``calculate_frechet_distance``: if sqrtm(S1 S2) is not finite, retry
with eps*I (eps = 1e-6) added to both covariances; if the result is complex, fail (ValueError) when
the largest |imaginary part| on its diagonal exceeds 1e-3, else keep the real part.

Feature extractors (``FeatureExtractor.load``; the networks are in fid_networks.py, which describes them)
    "inception"            the FID Inception v3 of pytorch-fid's weights file (looked up at ``weights=PATH`` or in
                           the torch hub cache), or, when that file is absent, a proxy labelled "FID-proxy":
    "proxy-randconv-v1"    a fixed random-weight conv net (texture statistics; the imagenet32 fallback);
    "proxy-classifier-v2"  a small CNN fitted in seconds (float64) to classify the run's classes (the shapes fallback).

API (what train_imagenet.py calls)
    ext = FeatureExtractor.load(weights=None, device="cuda")   # .name, .dim, .is_proxy
    feats = ext.features(images, batch_size=200, progress=True)  # images (N, 3, H, W) uint8 in
                                                     # [0, 255] or float in [-1, 1] -> (N, dim)
    ref = Stats.from_features(feats_real, ext.name); save_stats(path, ref); ref = load_stats(path)
    res = fid_from_stats(ref, Stats.from_features(feats_gen, ext.name), sampler_steps=50)
    res = fid_from_features(feats_a, feats_b, ext, sampler_steps=None)   # same, from features
    fid_from_stats(..., fast=True)   # frechet_distance_eigh: same value, ~5x faster at dim 2048
    print(res.format())   # "FID 12.34 (inception, n=10000 vs 10000, sampler: DDIM 50 steps)"
    res.to_dict()         # value, n_samples_a, n_samples_b, extractor, is_proxy, sampler_steps
Lower-level: ``statistics(features) -> (mu, sigma)``, ``frechet_distance(mu1, s1, mu2, s2)`` (the
pytorch-fid form, the default) and ``frechet_distance_eigh`` (symmetric-eigenvalue form, derived in
its docstring; for dense evaluation schedules).

CLI (like pytorch-fid): ``python fid.py PATH_A PATH_B [--inception-weights P] [--batch-size N]
[--device D] [--save-stats OUT.npz] [--sampler-steps K]``; a path is a folder of PNG/JPEG images or
an .npz of statistics. ``--save-stats`` writes PATH_A's statistics (PATH_B may then be omitted).

Sample count: with n <= dim samples np.cov has rank <= n - 1 < dim. ``statistics`` then warns once
(one line) and computes anyway: sqrtm of the singular product usually stays finite; if it does
not, the eps*I retry above regularises it. Such scores are biased upward (FID's bias grows as 1/n)
and should not be compared across sample counts; the sample counts are printed with every score.

Deviations from the paper / from pytorch-fid
- The paper does not say how FID is computed; here it is pytorch-fid's recipe (mseitzer/pytorch-fid,
  `src/pytorch_fid/inception.py` and `fid_score.py`).
- Without the weights file a proxy extractor is used (above); its scores are labelled as such.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
from tqdm.auto import tqdm

import runfiles
from fid_networks import INCEPTION_FILE, ClassifierFeatures, FIDInceptionV3, RandomConvFeatures, load_inception_state

INCEPTION_NAME = "inception"
PROXY_NAME = "proxy-randconv-v1"
CLASSIFIER_PROXY_NAME = "proxy-classifier-v2"  # v1: the same net fitted in float32
PROXY_NOTE = "FID-proxy, not comparable to published FID"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# -----------------------------------------------------------------------------
# Frechet distance (Heusel et al. 2017; numerics of pytorch-fid)

_RANK_WARNED = False  # statistics() warns about rank-deficient covariances once per process


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (dim,) and covariance (dim, dim) of features (N, dim), in float64."""
    global _RANK_WARNED
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"features must be (N, dim) with N >= 2, got shape {feats.shape}")
    n, dim = feats.shape
    if n <= dim and not _RANK_WARNED:
        _RANK_WARNED = True
        warnings.warn(f"FID from {n} samples of {dim}-d features: covariance rank <= {n - 1} < {dim}, "
                      f"score is biased upward (computed anyway, eps*I retry if sqrtm fails)", RuntimeWarning)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm without the deprecated ``disp`` argument; its singular-matrix warning is
    silenced because the caller checks finiteness itself (pytorch-fid passes disp=False)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


def _as_stats(mu1, sigma1, mu2, sigma2):
    """float64 (dim,), (dim, dim) arrays; ValueError if the shapes disagree."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):  # sqrtm of a NaN matrix never returns
        raise ValueError("feature statistics are not finite (NaN or inf): the images or the network diverged")
    return mu1, sigma1, mu2, sigma2


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr sqrtm(S1 S2), in float64.

    Non-finite sqrtm -> retry with eps*I added to both covariances; complex sqrtm -> ValueError if
    max |imag(diag)| > 1e-3, else its real part (pytorch-fid's rule).
    """
    mu1, sigma1, mu2, sigma2 = _as_stats(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)                                   # sqrtm(S1 S2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        warnings.warn(f"sqrtm(S1 S2) is not finite; adding {eps:g}*I to both covariances", RuntimeWarning)
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.max(np.abs(np.diagonal(covmean).imag))
        if max_imag > 1e-3:
            raise ValueError(f"sqrtm(S1 S2) has an imaginary component of {max_imag:.3g} on its diagonal")
        covmean = covmean.real
    # ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr sqrtm(S1 S2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def psd_sqrt(sigma) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by eigh (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T                  # V diag(sqrt w) V^T


def frechet_distance_eigh(mu1, sigma1, mu2, sigma2, sqrt_sigma1=None) -> float:
    """The same d^2 by symmetric eigenvalues: at dim 2048, 5.0 s instead of sqrtm's 15.1 s (one
    thread), and 2.0 s when the reference's sqrt_sigma1 = psd_sqrt(sigma1) is passed in (cached).

    For symmetric PSD S1, S2: S1 S2 = S1^(1/2) M S1^(-1/2) with M = S1^(1/2) S2 S1^(1/2), so S1 S2 is
    similar to the symmetric PSD M and has its eigenvalues lam_i >= 0; the principal sqrtm(S1 S2)
    has eigenvalues sqrt(lam_i), hence Tr sqrtm(S1 S2) = sum_i sqrt(lam_i) (singular S1: by
    continuity). Agrees with ``frechet_distance`` to round-off for full-rank covariances (tested);
    it never fails, where the sqrtm form may raise on rank-deficient ones.
    """
    mu1, sigma1, mu2, sigma2 = _as_stats(mu1, sigma1, mu2, sigma2)
    root = psd_sqrt(sigma1) if sqrt_sigma1 is None else np.asarray(sqrt_sigma1, np.float64)
    lam = np.linalg.eigvalsh(root @ sigma2 @ root)                      # eigenvalues of S1 S2
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(np.clip(lam, 0.0, None)).sum())


@dataclasses.dataclass
class Stats:
    """Feature statistics of one image set: mu (dim,), sigma (dim, dim), n samples, extractor name;
    sqrt_sigma caches psd_sqrt(sigma) for fid_from_stats(fast=True) (not saved)."""
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str
    sqrt_sigma: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_features(cls, features, extractor: str) -> "Stats":
        mu, sigma = statistics(features)
        return cls(mu, sigma, int(np.shape(features)[0]), extractor)


def save_stats(path, stats: Stats) -> None:
    """npz with mu, sigma, n, extractor (pytorch-fid's files hold mu and sigma only); atomic write."""
    runfiles.atomic_write(path, "wb", lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma, n=stats.n,
                                                         extractor=stats.extractor))


def load_stats(path) -> Stats:
    """Inverse of save_stats. A pytorch-fid npz (mu, sigma only) loads as extractor "inception", n=0."""
    if not os.path.isfile(path):
        raise ValueError(f"statistics file not found: {path}")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # not a zip, truncated, pickled objects: errors of every kind
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__})") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"{path} has no 'mu'/'sigma' arrays")
    n = int(arrays["n"]) if "n" in arrays else 0
    extractor = str(arrays["extractor"]) if "extractor" in arrays else INCEPTION_NAME
    return Stats(arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64), n, extractor)


@dataclasses.dataclass
class FIDResult:
    """One score with what is needed to read it: sample counts, extractor, sampler steps."""
    value: float
    n_samples_a: int
    n_samples_b: int
    extractor: str
    is_proxy: bool
    sampler_steps: int | None = None   # DDIM steps of the generated set; None for real vs real

    def format(self) -> str:
        """'FID 12.34 (inception, n=10000 vs 10000, sampler: DDIM 50 steps)'."""
        sampler = "none" if self.sampler_steps is None else f"DDIM {self.sampler_steps} steps"
        label, note = ("FID-proxy", f"; {PROXY_NOTE}") if self.is_proxy else ("FID", "")
        value = f"{self.value:.2f}".replace("-0.00", "0.00")  # round-off below 0 of a squared distance
        return (f"{label} {value} ({self.extractor}, n={self.n_samples_a} vs {self.n_samples_b}, "
                f"sampler: {sampler}{note})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fid_from_stats(a: Stats, b: Stats, sampler_steps: int | None = None, fast: bool = False) -> FIDResult:
    """FID between two Stats computed with the same extractor. fast=True uses frechet_distance_eigh
    and caches psd_sqrt(sigma) on b (or uses a's cache if a has one): pass the fixed reference set
    as b and its root is computed once across evaluations."""
    if a.extractor != b.extractor:
        raise ValueError(f"statistics come from different extractors: {a.extractor!r} vs {b.extractor!r}")
    if fast:  # d is symmetric: root the side that has a cached sqrt_sigma, else compute and cache b's
        ref, other = (a, b) if a.sqrt_sigma is not None else (b, a)
        if ref.sqrt_sigma is None:
            ref.sqrt_sigma = psd_sqrt(ref.sigma)
        value = frechet_distance_eigh(ref.mu, ref.sigma, other.mu, other.sigma, sqrt_sigma1=ref.sqrt_sigma)
    else:
        value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    return FIDResult(value, a.n, b.n, a.extractor, a.extractor != INCEPTION_NAME, sampler_steps)


def fid_from_features(feats_a, feats_b, extractor: "FeatureExtractor", sampler_steps: int | None = None) -> FIDResult:
    """FID between two feature arrays (N_a, dim), (N_b, dim) produced by ``extractor``."""
    return fid_from_stats(Stats.from_features(feats_a, extractor.name),
                          Stats.from_features(feats_b, extractor.name), sampler_steps)

# -----------------------------------------------------------------------------
# feature extractor: the one object train_imagenet.py holds


def default_weights_path() -> Path:
    """$TORCH_HOME/hub/checkpoints/<file> (torch.hub.get_dir honours TORCH_HUB / TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class FeatureExtractor:
    """A frozen network plus its name; ``features`` maps images to an (N, dim) array."""

    def __init__(self, net: nn.Module, name: str, dim: int, device):
        self.net = net.to(device).eval()
        self.name, self.dim, self.device = name, dim, torch.device(device)
        # the net's float type (the classifier proxy: float64; fid_networks says why); images are cast to it
        self.dtype = next((t.dtype for t in net.state_dict().values() if t.is_floating_point()), torch.float32)
        self.is_proxy = name != INCEPTION_NAME

    @classmethod
    def load(cls, weights=None, device=None, force_proxy: bool = False) -> "FeatureExtractor":
        """Inception from ``weights`` (must exist) or the hub cache; else (or with force_proxy) the proxy net."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if weights is not None and not os.path.isfile(weights):
            raise ValueError(f"inception weights not found: {weights}")
        path = Path(weights) if weights is not None else default_weights_path()
        if force_proxy or not path.is_file():
            return cls(RandomConvFeatures(seed=0), PROXY_NAME, sum(RandomConvFeatures.widths), device)
        net = FIDInceptionV3()
        load_inception_state(net, path)
        return cls(net, INCEPTION_NAME, 2048, device)

    @classmethod
    def classifier_proxy(cls, images: np.ndarray, labels: np.ndarray, device=None) -> "FeatureExtractor":
        """The shapes proxy: ClassifierFeatures fitted on (images, labels) with seed 0 (the run's training set)."""
        net = ClassifierFeatures.fit(images, labels)
        return cls(net, CLASSIFIER_PROXY_NAME, ClassifierFeatures.dim, device or "cpu")

    @torch.no_grad()
    def features(self, images, batch_size: int = 200, progress: bool = False) -> np.ndarray:
        """images (N, 3, H, W): uint8 in [0, 255] or float in [-1, 1] (numpy or torch) -> (N, dim) in the net's
        float type (float32; the classifier proxy: float64)."""
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and images.numel() and (images.min() < -1.001 or images.max() > 1.001):
            raise ValueError(f"float images must lie in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]")
        out = []
        for start in tqdm(range(0, len(images), batch_size), desc=f"features ({self.name})", disable=not progress):
            x = images[start:start + batch_size].to(self.device)
            x = x.to(self.dtype) / 255 if x.dtype == torch.uint8 else (x.to(self.dtype) + 1) / 2  # (b, 3, H, W)
            out.append(self.net(x).cpu().numpy())                                     # (b, dim)
        return np.concatenate(out, axis=0) if out else np.zeros((0, self.dim), str(self.dtype).removeprefix("torch."))

# -----------------------------------------------------------------------------
# command line: python fid.py PATH_A PATH_B


def image_paths(folder) -> list[Path]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no PNG/JPEG images in {folder}")
    return paths


def _read_image(path, header_only: bool = False) -> np.ndarray | None:
    """(H, W, 3) uint8, or None after checking only that the file opens as an image (header_only)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return None if header_only else np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot decode image {path} ({type(e).__name__})") from None


def folder_features(ext: FeatureExtractor, folder, batch_size: int, progress: bool) -> np.ndarray:
    """Features of every image in a folder, read one batch at a time (all images must share a size)."""
    paths, out, size = image_paths(folder), [], None
    for start in tqdm(range(0, len(paths), batch_size), desc=f"{Path(folder).name}", disable=not progress):
        batch = [_read_image(p) for p in paths[start:start + batch_size]]  # (H, W, 3) uint8
        size = size or batch[0].shape
        if any(a.shape != size for a in batch):
            raise ValueError(f"images in {folder} differ in size (expected {size[1]}x{size[0]})")
        out.append(ext.features(np.stack(batch).transpose(0, 3, 1, 2), batch_size))  # (b, 3, H, W) -> (b, dim)
    return np.concatenate(out, axis=0)


def path_stats(path, ext: FeatureExtractor | None, batch_size: int, progress: bool) -> Stats:
    if str(path).endswith(".npz"):
        return load_stats(path)
    return Stats.from_features(folder_features(ext, path, batch_size, progress), ext.name)


def main(argv=None) -> None:
    p = runfiles.Parser(description="FID between two image folders or .npz statistics files.")
    p.add_argument("path_a", help="folder of PNG/JPEG images, or .npz statistics")
    p.add_argument("path_b", nargs="?", help="second folder or .npz (optional with --save-stats)")
    p.add_argument("--inception-weights", default=None, help=f"{INCEPTION_FILE} (default: torch hub cache)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default=None, help="auto | cpu | cuda[:i] (default: cuda if available, else cpu)")
    p.add_argument("--save-stats", default=None, metavar="OUT.npz", help="write PATH_A's statistics here")
    p.add_argument("--sampler-steps", type=int, default=None, help="DDIM steps of the generated set (printed)")
    args = p.parse_args(argv)
    if args.path_b is None and args.save_stats is None:
        p.error("PATH_B is required unless --save-stats is given")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    for path in (args.path_a, args.path_b):
        if path is not None and not (os.path.isdir(path) or (path.endswith(".npz") and os.path.isfile(path))):
            p.error(f"not a folder of images or an .npz file: {path}")
    if args.save_stats:
        parent = os.path.dirname(os.path.abspath(args.save_stats))
        if not (os.path.isdir(parent) and os.access(parent, os.W_OK)) or os.path.isdir(args.save_stats):
            p.error(f"cannot write --save-stats {args.save_stats}: {parent} is not a writable folder")
    try:
        runfiles.check_device(args.device)
        folders = [x for x in (args.path_a, args.path_b) if x is not None and not x.endswith(".npz")]
        for folder in folders:  # every image must open before any feature is computed
            for path in image_paths(folder):
                _read_image(path, header_only=True)
        ext = FeatureExtractor.load(args.inception_weights, None if args.device == "auto" else args.device) \
            if folders else None
        if ext is not None and ext.is_proxy:
            print(f"warning: {INCEPTION_FILE} not found (looked in {default_weights_path().parent}); "
                  f"using {PROXY_NAME}: {PROXY_NOTE}", file=sys.stderr)
        stats_a = path_stats(args.path_a, ext, args.batch_size, progress=True)
        if args.save_stats:
            save_stats(args.save_stats, stats_a)
            print(f"saved statistics of {args.path_a} ({stats_a.extractor}, n={stats_a.n}) to {args.save_stats}")
        if args.path_b is not None:
            stats_b = path_stats(args.path_b, ext, args.batch_size, progress=True)
            print(fid_from_stats(stats_a, stats_b, args.sampler_steps).format())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    runfiles.run(main)  # faults (an unreadable file, a full disk): one line, exit 74
