"""Image data for train_imagenet.py: downsampled ImageNet 32x32 in its official npz files, and the built-in
procedural "shapes" stand-in of the same shape (paper Section 4.1, Appendix C.1.2; the ImageNet-32 format of
Chrabaszcz et al. 2017, "A Downsampled Variant of ImageNet as an Alternative to the CIFAR datasets").

Why a module of its own: file formats and image synthesis are the data side of the image experiment;
train_imagenet.py keeps the configuration, the evaluation and the continual loop, which then read in one piece.
The sample-grid pictures (PNG tables of uint8 images, and --compare) live here too, for the same reason.

    imagenet32  DIR/Imagenet32_train_npz/train_data_batch_{1..10}.npz and DIR/Imagenet32_val_npz/val_data.npz:
                `data` (N, 3072) uint8 channel-planar, `labels` 1-indexed (1..1000). Classes 1..500 -> 0..499;
                task k = classes 50k .. 50k+49. Each file's `data` member is streamed from its zip in row chunks
                into ONE preallocated uint8 array (np.load(mmap_mode="r") cannot map members of a zip), so no
                float copy of the training set ever exists; batches become float one at a time (`to_float`).
    shapes      500 classes of 32x32 RGB: class c = shape (c % 10) x colour ((c // 10) % 10) x background
                (c // 100); train and held-out sets from disjoint random streams. image_size 16 (the CPU
                presets) averages each 2x2 block of the 32x32 images (`downsample`): the same classes, 4x fewer
                pixels for the network to process.

Deviations from the paper: none here (the npz layout is the official one); `shapes` is our stand-in for when the
ImageNet-32 files are absent, and every result made with it says so; so is a shapes run at 16x16.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

import runfiles

# ----------------------------------------------------------------------------------------------------------------
# data: downsampled ImageNet 32x32, official npz files (Chrabaszcz et al. 2017)

IMAGENET32_TRAIN = [f"Imagenet32_train_npz/train_data_batch_{i}.npz" for i in range(1, 11)]
IMAGENET32_VAL = ["Imagenet32_val_npz/val_data.npz"]
IMAGENET32_HELP = ("download Imagenet32_train_npz.zip and Imagenet32_val_npz.zip (Downsampled ImageNet 32x32) "
                   "from https://image-net.org/download-images (login required) and unzip both into that folder, "
                   "or run without it: --dataset shapes")
ROW = 3 * 32 * 32  # one image, channel-planar: 1024 R, then 1024 G, then 1024 B values
READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


@dataclass
class ImageSet:
    """images (N, 3, 32, 32) uint8 and labels (N,) int64 class ids 0..C-1."""
    images: np.ndarray
    labels: np.ndarray

    def task_index(self, task: int, classes_per_task: int) -> np.ndarray:
        """Row indices of task `task` (classes task*C .. task*C + C - 1), ascending."""
        return np.flatnonzero(self.labels // classes_per_task == task)


def to_float(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> float32 in [-1, 1] on device (Appendix C.1.2: 'normalized to (-1, 1)')."""
    return torch.from_numpy(images).to(device).float().div_(127.5).sub_(1.0)


def _npz_labels(path: Path) -> np.ndarray:
    """The `labels` array of an ImageNet-32 npz file, validated: 1-D integers in 1..1000."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            labels = np.asarray(z["labels"]) if {"data", "labels"} <= keys else None
    except READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from None
    if labels is None:
        raise ValueError(f"{path}: expected arrays 'data' and 'labels', found {sorted(keys)}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise ValueError(f"{path}: labels out of range 1..1000 (ImageNet-32 labels are 1-indexed), "
                         f"found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def _stream_rows(path: Path, n_rows: int, chunk: int = 8192):
    """Yield (start, (m, 3, 32, 32) uint8) chunks of the npz member data.npy, read from the zip stream."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("data.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = read_header(f)
            if dtype != np.uint8 or len(shape) != 2 or shape[1] != ROW or fortran:
                raise ValueError(f"'data' must be a C-ordered uint8 array of shape (N, {ROW}), "
                                 f"got {dtype} {shape}{' (Fortran order)' if fortran else ''}")
            if shape[0] != n_rows:
                raise ValueError(f"'data' has {shape[0]} rows but 'labels' has {n_rows}")
            for start in range(0, n_rows, chunk):
                m = min(chunk, n_rows - start)
                buf = f.read(m * ROW)
                if len(buf) != m * ROW:
                    raise ValueError(f"'data' is truncated at row {start + len(buf) // ROW}")
                yield start, np.frombuffer(buf, np.uint8).reshape(m, 3, 32, 32)  # (m, 3072) -> (m, 3, 32, 32)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: {e}") from None


def load_npz_files(paths: list[Path], num_classes: int, progress: bool = False) -> ImageSet:
    """Rows with label <= num_classes from the given npz files, in one preallocated uint8 array.

    Two passes: the labels of every file (small) to count the kept rows, then each file's `data` once,
    streamed in chunks of 8,192 rows, copying kept rows into place. Peak memory = the result + one chunk.
    """
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"missing {missing[0]}: {IMAGENET32_HELP}")
    labels = [_npz_labels(p) for p in paths]
    keep = [lab <= num_classes for lab in labels]
    total = int(sum(k.sum() for k in keep))
    images = np.empty((total, 3, 32, 32), np.uint8)   # the only copy of the kept images
    out_labels = np.empty(total, np.int64)
    pos = 0
    for path, lab, k in tqdm(list(zip(paths, labels, keep)), desc="loading ImageNet-32", disable=not progress):
        for start, rows in _stream_rows(path, len(lab)):
            kk = k[start:start + len(rows)]
            m = int(kk.sum())
            images[pos:pos + m] = rows[kk]
            out_labels[pos:pos + m] = lab[start:start + len(rows)][kk] - 1   # 1-indexed -> 0-based
            pos += m
    return ImageSet(images, out_labels)


def load_imagenet32(data_dir: str, num_classes: int, progress: bool = False) -> tuple[ImageSet, ImageSet]:
    """(train, held-out val) of the first num_classes ImageNet-32 classes."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"ImageNet-32 data folder {root} not found: {IMAGENET32_HELP}")
    train = load_npz_files([root / f for f in IMAGENET32_TRAIN], num_classes, progress)
    val = load_npz_files([root / f for f in IMAGENET32_VAL], num_classes, progress)
    for name, s in (("training", train), ("validation", val)):
        absent = sorted(set(range(num_classes)) - set(np.unique(s.labels).tolist()))
        if absent:
            raise ValueError(f"{root}: the {name} files hold no image of class {absent[0] + 1} (1-indexed)")
    return train, val


# ----------------------------------------------------------------------------------------------------------------
# data: procedural shapes (same shape as ImageNet-32: 500 classes, 32x32 RGB)

SHAPES = ("disc", "square", "triangle", "diamond", "plus", "ring", "star", "bars", "cross", "half-disc")
BACKGROUNDS = ("dark", "light", "grey", "gradient", "checker")
SUPERSAMPLE = 2  # shapes are drawn at 64x64 and box-filtered to 32x32 (anti-aliased edges)


def _polygon(cx, cy, radii, angle0):
    """Vertices at equal angles starting at angle0, with radii cycling through `radii`."""
    n = len(radii)
    return [(cx + r * math.cos(angle0 + 2 * math.pi * i / n), cy + r * math.sin(angle0 + 2 * math.pi * i / n))
            for i, r in enumerate(radii)]


def _bar(cx, cy, half_len, half_w, angle):
    """Corners of a rectangle centred at (cx, cy), long axis at `angle`."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + a * c - b * s, cy + a * s + b * c)
            for a, b in ((-half_len, -half_w), (half_len, -half_w), (half_len, half_w), (-half_len, half_w))]


def _shape_mask(shape: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Anti-aliased coverage mask (32, 32) in [0, 1] of one shape; geometry in 64x64 supersampled pixels."""
    size = 32 * SUPERSAMPLE
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    name = SHAPES[shape]
    if name == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name in ("square", "diamond"):
        d.polygon(_polygon(cx, cy, [r * 1.15] * 4, rot + (math.pi / 4 if name == "square" else 0.0)), fill=255)
    elif name == "triangle":
        d.polygon(_polygon(cx, cy, [r * 1.2] * 3, rot - math.pi / 2), fill=255)
    elif name in ("plus", "cross"):
        a = rot + (math.pi / 4 if name == "cross" else 0.0)
        d.polygon(_bar(cx, cy, r, r * 0.3, a), fill=255)
        d.polygon(_bar(cx, cy, r, r * 0.3, a + math.pi / 2), fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=max(1, int(r * 0.4)))
    elif name == "star":
        d.polygon(_polygon(cx, cy, [r * 1.2, r * 0.5] * 5, rot - math.pi / 2), fill=255)
    elif name == "bars":
        for off in (-0.45 * r, 0.45 * r):
            d.polygon(_bar(cx - off * math.sin(rot), cy + off * math.cos(rot), r, r * 0.22, rot), fill=255)
    else:  # half-disc
        deg = math.degrees(rot)
        d.pieslice([cx - r, cy - r, cx + r, cy + r], 180 + deg, 360 + deg, fill=255)
    im = im.resize((32, 32), Image.BOX)
    return np.asarray(im, dtype=np.float32) / 255.0  # (32, 32)


def _backgrounds(kind: int, shade: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 32, 32, 3) float32 in [0, 1]; shade (n,) jitters the brightness per image."""
    name, n = BACKGROUNDS[kind], len(shade)
    s = shade[:, None, None, None].astype(np.float32)                        # (n, 1, 1, 1)
    if name == "dark":
        bg = 0.08 + s + np.zeros((1, 32, 32, 3), np.float32)
    elif name == "light":
        bg = 0.88 - s + np.zeros((1, 32, 32, 3), np.float32)
    elif name == "grey":
        bg = 0.45 + s + rng.normal(0, 0.06, (n, 32, 32, 1)).astype(np.float32)
    elif name == "gradient":
        ramp = np.linspace(0.0, 1.0, 32, dtype=np.float32)[None, :, None, None]  # (1, 32, 1, 1), top to bottom
        bg = 0.1 + s + ramp * np.array([0.15, 0.3, 0.55], np.float32)            # dark to blue-grey
    else:  # checker: 4-pixel squares, low contrast
        yy, xx = np.mgrid[0:32, 0:32]
        bg = 0.3 + s + (0.12 * (((yy // 4) + (xx // 4)) % 2)).astype(np.float32)[None, :, :, None]
    return np.broadcast_to(bg, (n, 32, 32, 3))


def render_shape_class(dataset_seed: int, split: int, c: int, n: int) -> np.ndarray:
    """n images (n, 3, 32, 32) uint8 of class c; split 0 = train, 1 = held-out, 2 = the FID-proxy classifier's
    training set (disjoint random streams).

    Class c: shape SHAPES[c % 10], foreground hue (c // 10) % 10 / 10, background BACKGROUNDS[c // 100].
    Per image: position +-4 px, radius 8-12 px, rotation +-20 deg, saturation/value and background
    brightness jitter, pixel noise (sigma 3/255).
    """
    rng = np.random.default_rng([dataset_seed, split, c])
    shape, hue, bg_kind, ss = c % 10, ((c // 10) % 10) / 10.0, c // 100, SUPERSAMPLE
    cx, cy = (16 + rng.uniform(-4, 4, n)) * ss, (16 + rng.uniform(-4, 4, n)) * ss
    r, rot = rng.uniform(8, 12, n) * ss, np.radians(rng.uniform(-20, 20, n))
    sat, val, shade = rng.uniform(0.75, 0.95, n), rng.uniform(0.8, 1.0, n), rng.uniform(0.0, 0.08, n)
    mask = np.stack([_shape_mask(shape, cx[i], cy[i], r[i], rot[i]) for i in range(n)])[..., None]  # (n,32,32,1)
    fg = np.array([colorsys.hsv_to_rgb(hue, sat[i], val[i]) for i in range(n)], np.float32)[:, None, None, :]
    img = _backgrounds(bg_kind, shade, rng) * (1 - mask) + fg * mask               # (n, 32, 32, 3)
    img = img + rng.normal(0, 3 / 255, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 3, 1, 2)  # (n, 3, 32, 32)


def make_shapes(dataset_seed: int, num_classes: int, per_class: int, split: int, progress: bool = False) -> ImageSet:
    """The procedural set: per_class images of each class 0..num_classes-1, class-sorted."""
    images = np.empty((num_classes * per_class, 3, 32, 32), np.uint8)
    for c in tqdm(range(num_classes), desc=f"drawing shapes ({('train', 'held-out', 'classifier')[split]})",
                  disable=not progress, leave=False):
        images[c * per_class:(c + 1) * per_class] = render_shape_class(dataset_seed, split, c, per_class)
    return ImageSet(images, np.repeat(np.arange(num_classes, dtype=np.int64), per_class))


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 3, 32, 32) uint8 -> (N, 3, size, size) uint8, each output pixel the rounded mean of a (32 / size)^2 block
    (the box filter the shapes are drawn with); size 32 returns the images unchanged."""
    f = 32 // size
    if size * f != 32:
        raise ValueError(f"image size must divide 32, got {size}")
    if f == 1:
        return images
    blocks = images.reshape(len(images), 3, size, f, size, f).astype(np.float32)  # (N, 3, s, f, s, f)
    return (blocks.mean(axis=(3, 5)) + 0.5).astype(np.uint8)                      # (N, 3, s, s)


def classifier_set(cfg) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, S, S) uint8, labels (N,)) of the shapes' third split (split 2, disjoint from train and
    held-out), min(200, shapes_train_per_class) images of every class of the run: what fid.py's classifier proxy
    is trained on."""
    per_class = min(200, cfg.shapes_train_per_class)
    s = make_shapes(cfg.shapes_seed, cfg.num_tasks * cfg.classes_per_task, per_class, 2, cfg.progress)
    return downsample(s.images, cfg.image_size), s.labels


def load_data(cfg) -> tuple[ImageSet, ImageSet]:
    """(train, held-out) for the configured dataset, classes and image size (shapes only may be below 32)."""
    n_classes = cfg.num_tasks * cfg.classes_per_task
    if cfg.dataset == "imagenet32":
        return load_imagenet32(cfg.data_dir, n_classes, cfg.progress)
    sets = (make_shapes(cfg.shapes_seed, n_classes, cfg.shapes_train_per_class, 0, cfg.progress),
            make_shapes(cfg.shapes_seed, n_classes, cfg.heldout_per_class, 1, cfg.progress))
    return tuple(ImageSet(downsample(s.images, cfg.image_size), s.labels) for s in sets)


# ----------------------------------------------------------------------------------------------------------------
# pictures: sample grids (train_imagenet.py's samples_*.png, --compare)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Samples (m, 3, S, S) in [-1, 1] -> uint8 (m, 3, S, S), as image_data stores images."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def save_grid(path: str, cells: list[list[np.ndarray | None]], row_names: list[str], col_names: list[str],
              per_row: int = 5) -> None:
    """PNG of a table of image blocks, atomic: cells[r][c] uint8 (m, 3, S, S) laid out in rows of per_row images
    (1 px gaps), or None (left blank); 8 px between blocks; names in the margins; nearest-neighbour upscaling to
    at least 64 px per image."""
    size = next(c for row in cells for c in row if c is not None).shape[-1]
    scale, gap, sep, left, top = max(2, 64 // size), 1, 8, 8 * max(map(len, row_names)) + 8, 16
    cols = min(per_row, max(len(c) for row in cells for c in row if c is not None))
    lines = max(-(-len(c) // per_row) for row in cells for c in row if c is not None)
    cw, ch = cols * (size * scale + gap) - gap, lines * (size * scale + gap) - gap  # one block, in pixels
    canvas = np.full((top + len(cells) * (ch + sep), left + len(cells[0]) * (cw + sep), 3), 255, np.uint8)
    for r, row in enumerate(cells):
        for c, block in enumerate(row):
            for i, img in enumerate([] if block is None else block):
                y = top + r * (ch + sep) + (i // per_row) * (size * scale + gap)
                x = left + c * (cw + sep) + (i % per_row) * (size * scale + gap)
                big = img.transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)  # (S, S, 3) -> (S*scale, S*scale, 3)
                canvas[y:y + size * scale, x:x + size * scale] = big
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    for r, name in enumerate(row_names):
        draw.text((4, top + r * (ch + sep) + ch // 2 - 5), name, fill=(0, 0, 0))
    for c, name in enumerate(col_names):
        draw.text((left + c * (cw + sep), 3), name, fill=(0, 0, 0))
    runfiles.atomic_write(path, "wb", lambda f: im.save(f, format="PNG"))


def save_task_grids(out_dir: str, moments: list[list[np.ndarray]]) -> None:
    """After task i (i = len(moments)): samples_after_task<i>.png, row j = task j's first classes, column i' = after
    task i' (the same sampler noise in every column, so what changes along a row is the model: forgetting), and
    samples.npz with the same images (after<i'>: uint8 (i' + 1, m, 3, S, S)) for `--compare`."""
    k = len(moments)
    cells = [[moments[i][j] if j <= i else None for i in range(k)] for j in range(k)]
    save_grid(os.path.join(out_dir, f"samples_after_task{k:02d}.png"), cells, [f"T{j + 1}" for j in range(k)],
              [f"after T{i + 1}" for i in range(k)])
    path = os.path.join(out_dir, "samples.npz")
    runfiles.atomic_write(path, "wb", lambda f: np.savez(f, **{f"after{i + 1}": np.stack(m)
                                                               for i, m in enumerate(moments)}))


def save_curve_grid(out_dir: str, points: list) -> None:
    """samples_task01_curve.png: Task 1's samples at (at most 12 of) its curve points during Task 1, one row each.
    points: [(in-task step, uint8 (m, 3, S, S))]."""
    keep = np.unique(np.linspace(0, len(points) - 1, min(len(points), 12)).round().astype(int))
    save_grid(os.path.join(out_dir, "samples_task01_curve.png"), [[points[i][1]] for i in keep],
              [f"step {points[i][0]}" for i in keep], ["Task 1 samples (fixed noise)"], per_row=10)


def compare(run_dirs: list[str], out: str) -> None:
    """One PNG, one row per run: Task 1's samples after Task 1 and after the run's last task (from samples.npz),
    e.g. every method of a seed side by side. The runs must share the sampler noise (seed) to compare like with
    like. Every input is read and checked, and `out` checked, before anything is written (ValueError, one line)."""
    runfiles.require(not os.path.isdir(out), f"--out {out} is a folder; name a .png file")
    runfiles.check_writable(os.path.dirname(os.path.abspath(out)), "--out's folder")
    cells, names, lasts = [], [], set()
    for d in run_dirs:
        path, config = os.path.join(d, "samples.npz"), os.path.join(d, "config.json")
        runfiles.require(os.path.isfile(path), f"{path} not found (written at every task end of a run)")
        runfiles.require(os.path.isfile(config), f"{config} not found: {d} is not a run folder")
        try:
            with np.load(path, allow_pickle=False) as z, open(config, encoding="utf-8") as f:
                cfg, last = json.load(f), max(int(key[5:]) for key in z.files if key.startswith("after"))
                cells.append([z["after1"][0], z[f"after{last}"][0]])
            names.append(f"{cfg['method']} s{cfg['seed']}")
        except Exception as e:  # zip / npy / JSON errors, a missing key, no "after" arrays
            raise ValueError(f"{d}: samples.npz or config.json is unreadable ({type(e).__name__}); rerun that run's "
                             f"command to write it again, or leave {d} out") from None
        lasts.add(last)
    runfiles.require(len({c[0].shape for c in cells}) == 1, "--compare: the runs' samples differ in image size")
    last = f"T{lasts.pop()}" if len(lasts) == 1 else "its last task"
    save_grid(out, cells, names, ["Task 1 after T1", f"Task 1 after {last}"])
    print(f"wrote {out}")
