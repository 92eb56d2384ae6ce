"""train_imagenet.py: the ImageNet-32 npz loader, the shapes dataset, the config, bad input, and smoke runs of
every method through subprocess, including a SIGKILL mid-run followed by a resume to an identical summary.json."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import experiment  # noqa: E402
import image_data
import train_imagenet as ti  # noqa: E402
from conftest import adam_steps, default_sigint, holds_weight_average, record_schedules, result, stop_at  # noqa: E402

# --------------------------------------------------------------------------------------------------------------
# ImageNet-32 npz files in the official format, small


def write_imagenet32(root: Path, per_file: int = 40, n_val: int = 30, seed: int = 0, compressed: bool = False):
    """Ten train batch files + val_data.npz: data (N, 3072) uint8 channel-planar, labels 1-indexed (1..1000)."""
    rng = np.random.default_rng(seed)
    save = np.savez_compressed if compressed else np.savez
    (root / "Imagenet32_train_npz").mkdir(parents=True, exist_ok=True)
    (root / "Imagenet32_val_npz").mkdir(parents=True, exist_ok=True)
    files = [root / f for f in image_data.IMAGENET32_TRAIN] + [root / f for f in image_data.IMAGENET32_VAL]
    for i, path in enumerate(files):
        n = n_val if i == len(files) - 1 else per_file
        labels = np.concatenate([np.tile(np.arange(1, 7), 3), rng.integers(1, 1001, n - 18)])  # 1..6 x3 per file
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = labels % 256  # pixel (R, 0, 0) tags the label so the test can check row/label alignment
        extra = {"mean": np.zeros(3072)} if i < len(files) - 1 else {}
        save(path, data=data, labels=list(labels), **extra)
    return files


def test_loader_keeps_first_classes_and_reshapes_channel_planar(tmp_path):
    write_imagenet32(tmp_path, compressed=True)
    train, val = image_data.load_imagenet32(str(tmp_path), num_classes=6)
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert train.labels.min() == 0 and train.labels.max() == 5  # 1-indexed 1..6 -> 0..5
    raw = [np.load(tmp_path / f) for f in image_data.IMAGENET32_TRAIN]
    kept = np.concatenate([z["data"][z["labels"] <= 6] for z in raw])
    assert len(train.labels) == len(kept)
    assert np.array_equal(train.images.reshape(len(kept), 3072), kept)  # channel-planar row order kept
    assert np.array_equal(train.images[:, 0, 0, 0], (train.labels + 1) % 256)
    assert len(val.labels) == int((np.load(tmp_path / image_data.IMAGENET32_VAL[0])["labels"] <= 6).sum())
    x = image_data.to_float(train.images[:5], "cpu")
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x, torch.from_numpy(train.images[:5]).float() / 127.5 - 1)


def test_loader_streams_in_chunks_matches_whole_read(tmp_path):
    files = write_imagenet32(tmp_path, per_file=50)
    labels = np.load(files[0])["labels"]
    rows = np.concatenate([r for _, r in image_data._stream_rows(files[0], len(labels), chunk=7)])
    assert np.array_equal(rows.reshape(len(labels), -1), np.load(files[0])["data"])


def _bad_input(tmp_path, capsys, argv):
    """One line on stderr, exit 2, and no run folder left behind."""
    with pytest.raises(SystemExit) as e:
        ti.experiment.run(ti.main, argv + ["--out", str(tmp_path / "run"), "--no-progress", "--fid-proxy",
                                           "--threads", "0"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "run").exists()
    return err


def _imagenet_args(root):
    return ["--preset", "smoke", "--dataset", "imagenet32", "--data-dir", str(root), "--classes-per-task", "3"]


@pytest.mark.parametrize("argv, expect", [
    (["--preset", "smoke", "--image-size", "12"], "shapes may be 8, 16 or 32"),
    (["--preset", "smoke", "--dataset", "imagenet32", "--image-size", "16"], "imagenet32 is 32x32"),
])
def test_bad_image_size_is_one_line_exit_2(tmp_path, capsys, argv, expect):
    assert expect in _bad_input(tmp_path, capsys, argv)


def test_missing_data_folder_says_where_to_get_it(tmp_path, capsys):
    err = _bad_input(tmp_path, capsys, ["--preset", "smoke", "--dataset", "imagenet32", "--data-dir",
                                        str(tmp_path / "nope")])
    assert "image-net.org" in err and "--dataset shapes" in err


@pytest.mark.parametrize("damage, expect", [
    ("missing", "missing"),
    ("corrupt", "not a readable npz"),
    ("shape", "shape (N, 3072)"),
    ("dtype", "uint8"),
    ("labels_zero", "out of range"),
    ("labels_big", "out of range"),
    ("no_labels", "expected arrays"),
    ("truncated", "truncated"),
])
def test_bad_npz_is_one_line_exit_2(tmp_path, capsys, damage, expect):
    root = tmp_path / "data"
    files = write_imagenet32(root)
    victim = files[3]
    if damage == "missing":
        victim.unlink()
    elif damage == "corrupt":
        victim.write_bytes(b"this is not a zip file")
    elif damage == "shape":
        np.savez(victim, data=np.zeros((40, 3000), np.uint8), labels=np.ones(40, np.int64))
    elif damage == "dtype":
        np.savez(victim, data=np.zeros((40, 3072), np.float32), labels=np.ones(40, np.int64))
    elif damage == "labels_zero":
        np.savez(victim, data=np.zeros((40, 3072), np.uint8), labels=np.arange(40))
    elif damage == "labels_big":
        np.savez(victim, data=np.zeros((40, 3072), np.uint8), labels=np.full(40, 1001))
    elif damage == "no_labels":
        np.savez(victim, data=np.zeros((40, 3072), np.uint8))
    elif damage == "truncated":  # a stored (uncompressed) member whose header promises more rows than it holds
        import zipfile
        with zipfile.ZipFile(victim, "w") as zf:
            zf.writestr("labels.npy", _npy_bytes(np.ones(40, np.int64)))
            zf.writestr("data.npy", _npy_bytes(np.zeros((40, 3072), np.uint8))[:-3072 * 5])
    err = _bad_input(tmp_path, capsys, _imagenet_args(root))
    assert expect in err, err


def _npy_bytes(a):
    import io
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# shapes dataset, config, batching


def test_shapes_deterministic_distinct_and_learnable():
    a = image_data.make_shapes(0, num_classes=50, per_class=12, split=0)
    b = image_data.make_shapes(0, num_classes=50, per_class=12, split=0)
    held = image_data.make_shapes(0, num_classes=50, per_class=6, split=1)
    assert a.images.shape == (600, 3, 32, 32) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, np.repeat(np.arange(50), 12))
    assert not np.array_equal(a.images[:6], held.images[:6])  # held-out split is a different draw
    assert not np.array_equal(image_data.make_shapes(1, 2, 4, 0).images, image_data.make_shapes(0, 2, 4, 0).images)
    # classes are distinct: nearest class mean on raw pixels beats chance (2%) by far on held-out images
    cent = a.images.reshape(50, 12, -1).astype(np.float32).mean(1)                       # (50, 3072)
    x = held.images.reshape(300, -1).astype(np.float32)
    pred = ((x[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
    assert (pred == held.labels).mean() > 0.25
    # every class of the 500 renders (all shapes x backgrounds)
    assert image_data.render_shape_class(0, 0, 499, 2).shape == (2, 3, 32, 32)


def test_config_defaults_are_table3_and_flags_generated():
    cfg = ti.Config()
    assert (cfg.batch_size, cfg.lr, cfg.epochs_per_task, cfg.lam, cfg.fisher_samples) == (128, 2e-4, 100, 15000, 10000)
    assert (cfg.replay_per_task, cfg.replay_ratio, cfg.inner_lr, cfg.ddim_steps) == (1300, 1.0, 1e-4, 50)
    assert (cfg.num_tasks, cfg.classes_per_task, cfg.model, cfg.dataset) == (10, 50, "paper", "imagenet32")
    small, _ = ti.experiment.parse_config(ti.Config, ti.PRESETS, ["--preset", "small", "--lam", "7",
                                                                  "--no-replay-rebuild"], "", ti.CHOICES)
    assert small.lam == 7 and small.replay_rebuild is False and small.dataset == "shapes" and small.num_tasks == 4
    assert (small.image_size, small.model, small.classes_per_task, small.lr_schedule) == (16, "mini", 5, "cosine")
    assert cfg.lr_schedule == "constant"  # Table 3


def test_lr_schedule():
    """constant = cfg.lr at every step (Table 3); cosine = linear warm-up over lr_warmup steps times a half cosine
    from cfg.lr to 0 over the task, restarting at each task (its values at both ends and the middle)."""
    assert {experiment.lr_at(ti.Config(), s, 10) for s in range(10)} == {2e-4}
    cfg = ti.Config(lr=4e-3, lr_schedule="cosine", lr_warmup=200)
    assert experiment.lr_at(cfg, 0, 4000) == pytest.approx(4e-3 / 200 * (1 + np.cos(0)) / 2, rel=1e-12)
    assert experiment.lr_at(cfg, 2000, 4000) == pytest.approx(2e-3, rel=1e-12)
    assert experiment.lr_at(cfg, 1999, 2000) == pytest.approx(4e-3 * (1 + np.cos(np.pi * 1999 / 2000)) / 2, rel=1e-12)
    assert experiment.lr_at(cfg, 199, 4000) > experiment.lr_at(cfg, 99, 4000) > experiment.lr_at(cfg, 0, 4000)


def test_batches_walk_epoch_permutations():
    cfg = ti.Config(batch_size=4, seed=3)
    rows = np.arange(100, 117)  # 17 rows -> 4 full batches per epoch, last row of each epoch's permutation dropped
    epoch0 = np.concatenate([ti.batch_rows(cfg, 2, s, rows) for s in range(4)])
    assert len(set(epoch0.tolist())) == 16 and set(epoch0) <= set(rows)
    assert np.array_equal(ti.batch_rows(cfg, 2, 1, rows), ti.batch_rows(cfg, 2, 1, rows))
    assert not np.array_equal(ti.batch_rows(cfg, 2, 0, rows), ti.batch_rows(cfg, 2, 4, rows))
    assert ti.steps_for_task(ti.Config(batch_size=128, epochs_per_task=100), 64_000) == 50_000  # Table 3 scale


def test_bench_prints_rates():
    proc = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), "--preset", "smoke", "--bench"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sampling" in proc.stdout and proc.stdout.count("images/s") == 3  # sampling, proxy, Inception (random)


# --------------------------------------------------------------------------------------------------------------
# smoke runs through subprocess (CPU, seconds each)


def run_script(out, *extra, wait=True):
    cmd = [sys.executable, str(ROOT / "train_imagenet.py"), "--preset", "smoke", "--out", str(out), *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tr") / "run"
    proc = run_script(out, "--method", "tr")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("method", ["finetune", "ewc", "replay", "ftml", "vrmcl"])
def test_smoke_every_method(tmp_path, method):
    proc = run_script(tmp_path / "run", "--method", method)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check_run(tmp_path / "run", method)


def _check_run(out, method):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["experiment"] == "imagenet" and summary["n_tasks_trained"] == 2
    assert summary["R"][0][1] is None and all(isinstance(v, float) for v in summary["R"][1])
    assert summary["transitions"] == [4] and len(summary["task1_curve"]) == 4  # steps 2 and 4 of each task
    assert set(summary["reconvergence"]["T1"]) == {"0.1", "0.2", "0.3"}
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "figure2.png", "summary.md", "samples.npz",
                 "samples_after_task01.png", "samples_after_task02.png", "samples_task01_curve.png"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["method"] == method and ckpt["state"]["task"] == 2


def test_adam_state_is_carried_unless_reset(tmp_path):
    """The image experiment carries Adam's moments across the boundary (its default, as its results were made);
    with --reset-optimizer the last task's Adam has taken that task's 4 steps, not 8. Catches a flag that is parsed
    but never reaches experiment.transition."""
    for flag, steps in (("--no-reset-optimizer", 8.0), ("--reset-optimizer", 4.0)):
        proc = run_script(tmp_path / flag, "--method", "finetune", flag)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert adam_steps(tmp_path / flag / "checkpoint.pt", "finetune") == {steps}


def test_smoke_tr(tr_run):
    _check_run(tr_run, "tr")
    records = [json.loads(line) for line in (tr_run / "metrics.jsonl").read_text().splitlines()]
    fisher = [r for r in records if r["kind"] == "fisher"]
    assert len(fisher) == 1 and set(fisher[0]["diagnostics"]["bands"]) <= {"0-250", "250-500", "500-750", "750-1000"}
    train = [r for r in records if r["kind"] == "train" and r["task"] == 1]
    assert all(k in train[0] for k in ("norm_A", "norm_B", "norm_C", "trust_region", "grad_norm"))


@pytest.mark.parametrize("method", ["tr", "vrmcl"])
def test_smoke_predicting_x0(method, tmp_path, monkeypatch):
    """--prediction sample, in process, for tr (Fisher, distillation replay, DDIM grids) and vrmcl (plain generative
    replay, support/query): every schedule the run builds carries the x0 form. Catches: a script that parses the
    flag but builds a diffusion.Schedule (training, the FID samples, the grids) without it."""
    made = record_schedules(monkeypatch)
    ti.main(["--preset", "smoke", "--out", str(tmp_path / "run"), "--method", method, "--prediction", "sample"])
    _check_run(tmp_path / "run", method)
    assert made and set(made) == {"sample"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prediction"] == "sample"


def test_smoke_ewc_with_the_diagonal_fisher(tmp_path):
    """--fisher diag (classic EWC) runs end to end and logs the diagonal's scalars instead of rho and c*."""
    proc = run_script(tmp_path / "run", "--method", "ewc", "--fisher", "diag")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fisher = [r for r in records if r["kind"] == "fisher"]
    assert len(fisher) == 1 and fisher[0]["trace"] > 0 and "rho" not in fisher[0]
    assert [r["trust_region"] > 0 for r in records if r["kind"] == "train" and r["task"] == 1] == [True, True]


def test_task_grids_keep_the_sampler_noise_and_compare_lines_runs_up(tmp_path, tr_run):
    """samples.npz: after task i, every seen task's first classes (one image each); the Task-1 images after task 1
    are the ones the boundary drew then (checkpointed state, not redrawn); --compare puts runs in rows. Catches a
    grid that regenerates old moments from the current model (forgetting could not show), or one class repeated."""
    with np.load(tr_run / "samples.npz") as z:
        assert sorted(z.files) == ["after1", "after2"]
        assert z["after1"].shape == (1, 2, 3, 32, 32) and z["after2"].shape == (2, 2, 3, 32, 32)
        assert z["after1"].dtype == np.uint8
        ck = torch.load(tr_run / "checkpoint.pt", weights_only=False)
        assert np.array_equal(ck["state"]["samples"][0][0], z["after1"][0])
    png = tmp_path / "compare.png"
    proc = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), "--compare", str(tr_run), str(tr_run),
                           "--out", str(png)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.is_file(), proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), "--compare", str(tmp_path), "--out",
                           str(png)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "samples.npz not found" in proc.stderr


def test_save_grid_layout(tmp_path):
    """Blocks land where the layout puts them, at the stated upscaling, with None cells left blank."""
    img = np.zeros((3, 3, 16, 16), np.uint8)
    img[:, 0] = 200                                                            # red images
    image_data.save_grid(str(tmp_path / "g.png"), [[img, None], [img, img]], ["T1", "T2"], ["a", "b"], per_row=2)
    a = np.asarray(image_data.Image.open(tmp_path / "g.png"))
    red = (a[..., 0] == 200) & (a[..., 1] == 0)
    assert red.sum() == 3 * 3 * (16 * 4) ** 2                                # 3 blocks of 3 images, 4x upscaled
    top, left, block_w = 16, 8 * 2 + 8, 2 * (64 + 1) - 1                      # margins; 2 images per block row
    assert red[top, left] and red[top + 63, left + 63] and not red[top + 64, left + 64]
    assert not red[top:top + 64, left + block_w + 8:].any()                 # cell (T1, b) is None: blank
    assert red[top + 2 * 64 + 1 + 8, left + block_w + 8]                     # cell (T2, b)


def test_shapes_downsample_is_the_block_mean():
    x = image_data.make_shapes(0, 2, 3, 0).images
    small = image_data.downsample(x, 16)
    assert small.shape == (6, 3, 16, 16) and image_data.downsample(x, 32) is x
    assert small[1, 2, 3, 4] == int(x[1, 2, 6:8, 8:10].astype(float).mean() + 0.5)
    with pytest.raises(ValueError, match="divide 32"):
        image_data.downsample(x, 12)


def test_rerun_with_another_config_is_refused_and_a_finished_run_is_kept(tmp_path, tr_run):
    proc = run_script(tr_run, "--method", "finetune", "--seed", "7", "--prediction", "sample")
    assert proc.returncode == 2 and "method 'tr' -> 'finetune'; seed 0 -> 7" in proc.stderr
    assert "prediction 'epsilon' -> 'sample'" in proc.stderr  # a resumed run keeps its parameterisation
    before = result(tr_run / "summary.json")
    proc = run_script(tr_run, "--method", "tr")  # the same command again: the finished run reports itself
    assert proc.returncode == 0 and result(tr_run / "summary.json") == before


def test_task1_cache_gives_the_run_that_trained_task1_itself(tmp_path, tr_run):
    """finetune writes Task 1's end to the cache; tr started from it has tr_run's numbers and log, record for record
    (a cache restored without the optimizer state, the loop state or Task 1's records fails this). A cache from
    another Task-1 configuration, or for a method that trains Task 1 its own way, is refused before any work."""
    cache = tmp_path / "task1.pt"
    first = run_script(tmp_path / "ft", "--method", "finetune", "--task1-cache", str(cache))
    assert first.returncode == 0 and cache.is_file(), first.stderr[-2000:]
    second = run_script(tmp_path / "tr", "--method", "tr", "--task1-cache", str(cache))
    assert second.returncode == 0 and "Task 1 from" in second.stdout, second.stderr[-2000:]
    mine, ref = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "tr", tr_run))
    for key in ("R", "task1_curve", "transitions", "reconvergence"):
        assert mine[key] == ref[key], key
    assert (tmp_path / "tr" / "metrics.jsonl").read_text() == (tr_run / "metrics.jsonl").read_text()
    for flags, expect in ((["--method", "tr", "--lr", "1e-3"], "lr 0.0002 -> 0.001"),
                          (["--method", "ftml"], "ftml trains Task 1 with its own update")):
        proc = run_script(tmp_path / "bad", *flags, "--task1-cache", str(cache))
        assert proc.returncode == 2 and expect in proc.stderr and not (tmp_path / "bad").exists(), proc.stderr


RESUME_FLAGS = ["--method", "tr", "--steps-per-task", "24", "--checkpoint-every", "5", "--curve", "end"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    assert run_script(out, *RESUME_FLAGS).returncode == 0
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, sig, clean_run):
    """Stop a run in task 2 (kill -9, or Ctrl-C: exit 130), rerun the same command: the same summary and log."""
    flags, clean = RESUME_FLAGS, clean_run
    stopped = tmp_path / "stopped"
    proc = run_script(stopped, *flags, wait=False)
    err = stop_at(proc, stopped / "metrics.jsonl", 30, sig)  # in task 2
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted at task 2" in err.strip().splitlines()[-1], err
    done = run_script(stopped, *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    assert result(stopped / "summary.json") == result(clean / "summary.json")
    assert (stopped / "metrics.jsonl").read_text() == (clean / "metrics.jsonl").read_text()


def test_smoke_at_16x16_with_a_longer_first_task(tmp_path):
    """The small preset's levers: 16x16, unet2d_mini, --first-task-steps, a --curve list naming steps past the end
    of the shorter later tasks (each task keeps the points it reaches), the cosine lr, the shapes classifier proxy."""
    proc = run_script(tmp_path / "run", "--method", "replay", "--image-size", "16", "--model", "mini",
                      "--first-task-steps", "6", "--curve", "2,4,6", "--lr-schedule", "cosine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "run" / "samples.npz") as z:
        assert z["after2"].shape == (2, 2, 3, 16, 16)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["transitions"] == [6] and [g for g, _ in summary["task1_curve"]] == [2, 4, 6, 8, 10]
    assert summary["extra"]["extractor"] == "proxy-classifier-v2"
    assert ti.metrics.task_curve_points("10,3000,4000", 2000) == {10}
    assert ti.metrics.task_curve_points("dense", 20) == {2, 4, 6, 8, 10, 15, 20}


def test_smoke_on_imagenet32_npz_files(tmp_path):
    write_imagenet32(tmp_path / "data")
    proc = run_script(tmp_path / "run", "--method", "finetune", *_imagenet_args(tmp_path / "data")[2:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["extra"]["dataset"] == "imagenet32" and summary["task_names"][1] == "T2 (classes 3-5)"
    assert summary["extra"]["extractor"] == "proxy-randconv-v1"  # the classifier proxy is for shapes only


def test_weight_average_is_evaluated_and_kept_at_each_task_end(tmp_path):
    """--ema 0.5: the run ends with the model holding the weight average of all its steps (kept at each task's end
    by experiment.end_task). Fails if the loop never adopts the average or averages fewer steps."""
    proc = run_script(tmp_path / "run", "--method", "tr", "--ema", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["learner"]["n"] == 8  # 2 tasks x 4 steps
    model = ti.build_model(ti.Config(**ckpt["config"]), "cpu")
    assert holds_weight_average(ckpt, model)
