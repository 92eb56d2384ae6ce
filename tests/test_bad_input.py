"""Bad input across the four command lines (train_cw10.py, train_imagenet.py, fid.py, metrics.py): every case ends
with exit code 2 and ONE line on stderr naming the problem, and leaves the output folder as it was. The divergence
cases (--lr 1e6) must stop within seconds with exit code 3, keep the last good checkpoint and write no summary.
Faults (a full disk, signals, dead workers) are in test_faults.py."""
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import cw10_data
import experiment
import fid
import image_data
import metrics
import train_cw10 as cw
import train_imagenet as ti

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CW = ["--preset", "smoke", "--threads", "1"]
IM = ["--preset", "smoke"]


@pytest.fixture(scope="module")
def cw_data(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("cw10_data"))
    cw10_data.ensure_demos(dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=d), ["hammer", "push-wall"])
    return d


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def listing(path):
    """Every file under `path` with its size and mtime (None if `path` does not exist)."""
    if not os.path.exists(path):
        return None
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)),
                   os.path.getmtime(os.path.join(d, f))) for d, _, fs in os.walk(path) for f in fs)


def fails(main, argv, message, capsys, out):
    """Run a CLI's main in-process: exit 2, one stderr line containing `message`, `out` unchanged."""
    before = listing(out)
    with pytest.raises(SystemExit) as e:
        experiment.run(main, argv) if main in (cw.main, ti.main) else main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err, err
    assert listing(out) == before
    return err


# ---------------------------------------------------------------------------------------------------------------
# train_cw10.py

CW_CASES = [
    (["--method", "sgd"], "invalid choice"),
    (["--tasks", "hammer,fly"], "unknown task"),
    (["--tasks", "hammer,hammer"], "distinct tasks"),
    (["--horizon", "6"], "multiple of 4"),
    (["--obs-horizon", "6", "--action-chunk", "4"], "O + A"),
    (["--obs-horizon", "0"], ">= 1"),
    (["--method", "ftml", "--batch-size", "7"], "support and query"),
    (["--lam", "-1"], "--lam must be >= 0"),
    (["--lr", "nan"], "--lr must be finite"),
    (["--lam", "inf"], "--lam must be finite"),
    (["--ema", "1"], "--ema must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be in"),
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--curve", "0,5"], "--curve must be"),
    (["--demo-keep", "maybe"], "invalid choice"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--grid", "S8_O6"], "--grid takes 'paper' or names"),
    (["--steps-per-task", "x"], "invalid int value"),
    (["--prediction", "x0"], "invalid choice"),
    (["--path-episodes", "3"], "--path-episodes (3) must be at most --eval-episodes (2)"),
    (["--first-task-steps", "-5"], "--first-task-steps must be >= 0"),
    (["--compare", "nowhere"], "--compare needs --out FILE.png"),
    (["--max-path-length", "1"], "--max-path-length 1 is too short for S=8, O=6, A=2"),
    (["--out", ""], "--out must not be empty"),
]


@pytest.mark.parametrize("flags,message", CW_CASES)
def test_cw10_flags(flags, message, tmp_path, capsys, cw_data):
    fails(cw.main, CW + ["--out", str(tmp_path / "run"), "--data-dir", cw_data] + flags, message, capsys,
          str(tmp_path / "run"))


def test_cw10_paths(tmp_path, capsys, cw_data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(cw.main, CW + ["--out", str(blocker / "run"), "--data-dir", cw_data], "cannot write the run folder",
          capsys, str(blocker))
    fails(cw.main, CW + ["--out", str(tmp_path / "run"), "--data-dir", str(blocker / "d")],
          "cannot write the demo cache", capsys, str(tmp_path / "run"))
    bad = tmp_path / "bad_data"
    bad.mkdir()
    cfg = dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=str(bad))
    for task in cw.task_list(cfg):
        (bad / os.path.basename(cw10_data.demo_path(cfg, task))).write_bytes(b"not a zip file")
    fails(cw.main, CW + ["--out", str(tmp_path / "run"), "--data-dir", str(bad)], "corrupt demo cache", capsys,
          str(tmp_path / "run"))


def test_cw10_folder_with_another_config(tmp_path, capsys, cw_data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cw.Config(**cw.PRESETS["smoke"]))))
    fails(cw.main, CW + ["--out", str(out), "--data-dir", cw_data, "--lam", "3"], "lam 12.0 -> 3.0", capsys, str(out))


def test_cw10_folder_in_use(tmp_path, capsys, cw_data):
    """A second run on a folder that a live process holds stops at once, naming that process."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, experiment, train_cw10 as cw\n"
                               "f = experiment.RunFolder(sys.argv[1], cw.Config()).__enter__()\n"
                               "print('locked', flush=True); time.sleep(60)", str(out)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fails(cw.main, CW + ["--out", str(out), "--data-dir", cw_data], f"in use by process {holder.pid}", capsys,
              str(out))
    finally:
        holder.kill()
        holder.wait()


def test_cw10_divergence_stops_in_seconds(tmp_path, cw_data):
    """--lr 1e6: one line naming task and step, exit 3, no summary, the kept checkpoint is finite, no MuJoCo log."""
    out = tmp_path / "run"
    start = time.time()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_cw10.py"), *CW, "--lr", "1e6", "--out", str(out),
                           "--data-dir", cw_data], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 3 and time.time() - start < 60
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: task 1 step") and "non-finite" in err[0], proc.stderr
    kept = "the last checkpoint (task 1, step" if (out / "checkpoint.pt").exists() else "no checkpoint was written"
    assert "no summary written, " + kept in err[0], err
    assert not (out / "summary.json").exists() and not (tmp_path / "MUJOCO_LOG.TXT").exists()
    if (out / "checkpoint.pt").exists():
        ck = torch.load(out / "checkpoint.pt", weights_only=False)
        assert all(torch.isfinite(v).all() for v in ck["model"].values())


def _paths_run(folder, tasks=("hammer", "push-wall"), method="tr", seed=0, config=True):
    """A run folder holding what --compare reads: task1_paths.npz (2 task ends, 2 episodes) and config.json."""
    folder.mkdir(parents=True)
    np.savez(folder / "task1_paths.npz", xyz=np.zeros((2, 2, 21, 9), np.float32), success=np.zeros((2, 2), bool),
             tasks=np.array(tasks))
    if config:
        (folder / "config.json").write_text(json.dumps({"method": method, "seed": seed}))
    return str(folder)


def test_cw10_compare_checks_inputs_and_output_first(tmp_path, capsys, monkeypatch):
    """--compare: rejects a traceback for a missing, truncated or config-less run folder or an unwritable output
    folder, a picture of runs whose task sequences differ (drawn under the last run's title), and rows that share
    a name (two runs of one method and seed, told apart by their folder)."""
    a, b = _paths_run(tmp_path / "a"), _paths_run(tmp_path / "b", method="ewc")
    out = str(tmp_path / "cmp" / "paths.png")
    compare = ["--compare", a, b, "--out", out]
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "task1_paths.npz").write_bytes(open(os.path.join(a, "task1_paths.npz"), "rb").read()[:100])
    (tmp_path / "cut" / "config.json").write_text("{}")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv, message in [
        (["--compare", a, str(tmp_path / "none"), "--out", out], "task1_paths.npz not found"),
        (["--compare", a, str(tmp_path / "cut"), "--out", out], "cut/task1_paths.npz is unreadable"),
        (["--compare", a, _paths_run(tmp_path / "nocfg", config=False), "--out", out], "config.json not found"),
        (["--compare", a, _paths_run(tmp_path / "other", tasks=("push", "hammer")), "--out", out],
         "compare runs of one task sequence"),
        (["--compare", a, b, "--out", str(blocker / "paths.png")], "cannot write --out's folder"),
        (["--compare", a, b, "--out", str(tmp_path)], "--compare needs --out FILE.png"),
    ]:
        fails(cw.main, argv, message, capsys, str(tmp_path / "cmp"))
    drawn = []
    monkeypatch.setattr(cw.cw10_paths.figures, "paths", lambda out, rows, names, *a: drawn.append(names))
    experiment.run(cw.main, compare[:2] + [_paths_run(tmp_path / "a2")] + compare[2:])
    assert drawn == [["tr s0 (a)", "tr s0 (a2)", "ewc s0"]]


# ---------------------------------------------------------------------------------------------------------------
# train_imagenet.py

IM_CASES = [
    (["--method", "maml"], "invalid choice"),
    (["--method", "ftml", "--batch-size", "7"], "support and query"),
    (["--replay-ratio", "-1"], "--replay-ratio must be >= 0"),
    (["--num-tasks", "0"], "--num-tasks must be > 0"),
    (["--num-tasks", "2", "--classes-per-task", "300"], "<= 500"),
    (["--epochs-per-task", "0"], "--epochs-per-task must be > 0"),
    (["--lr", "inf"], "--lr must be finite"),
    (["--ema", "-0.1"], "--ema must be in [0, 1)"),
    (["--seed", "-3"], "--seed must be in"),
    (["--curve", "often"], "--curve must be"),
    (["--inception-weights", "/nonexistent/w.pth"], "no such file"),
    (["--no-allow-rank-deficient-fid"], "not above the 128-d proxy-classifier-v2"),
    (["--dataset", "imagenet32", "--data-dir", "/nonexistent"], "Imagenet32_train_npz"),
]


@pytest.mark.parametrize("flags,message", IM_CASES)
def test_imagenet_flags(flags, message, tmp_path, capsys):
    fails(ti.main, IM + ["--out", str(tmp_path / "run")] + flags, message, capsys, str(tmp_path / "run"))


def test_imagenet_paths(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(ti.main, IM + ["--out", str(blocker / "run")], "cannot write the run folder", capsys, str(blocker))
    data = tmp_path / "data"
    for f in image_data.IMAGENET32_TRAIN + image_data.IMAGENET32_VAL:
        (data / f).parent.mkdir(parents=True, exist_ok=True)
        (data / f).write_bytes(b"garbage")
    fails(ti.main, IM + ["--out", str(tmp_path / "run"), "--dataset", "imagenet32", "--data-dir", str(data)],
          "not a readable npz file", capsys, str(tmp_path / "run"))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not torch")
    fails(ti.main, IM + ["--out", str(tmp_path / "run"), "--no-fid-proxy", "--inception-weights", str(weights)],
          "not a readable torch weights file", capsys, str(tmp_path / "run"))


def _samples_run(folder, tasks=2, size=8, method="tr", seed=0, config=True):
    """A run folder holding what train_imagenet.py --compare reads: samples.npz (after1 .. after<tasks>) and
    config.json."""
    folder.mkdir(parents=True)
    np.savez(folder / "samples.npz", **{f"after{i}": np.zeros((i, 2, 3, size, size), np.uint8)
                                        for i in range(1, tasks + 1)})
    if config:
        (folder / "config.json").write_text(json.dumps({"method": method, "seed": seed}))
    return str(folder)


def test_imagenet_compare_checks_inputs_and_output_first(tmp_path, capsys, monkeypatch):
    """--compare: rejects a traceback for a missing, truncated or config-less run folder, runs of different image
    sizes or an unwritable output, and a column title taken from the last run when the runs end at different
    tasks."""
    a, b = _samples_run(tmp_path / "a"), _samples_run(tmp_path / "b", method="ewc")
    out = str(tmp_path / "cmp" / "samples.png")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "samples.npz").write_bytes(open(os.path.join(a, "samples.npz"), "rb").read()[:100])
    (tmp_path / "cut" / "config.json").write_text("{}")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "dir.png").mkdir()
    for argv, message in [
        (["--compare", a, str(tmp_path / "none"), "--out", out], "none/samples.npz not found"),
        (["--compare", a, str(tmp_path / "cut"), "--out", out], "cut: samples.npz or config.json is unreadable"),
        (["--compare", a, _samples_run(tmp_path / "nocfg", config=False), "--out", out], "config.json not found"),
        (["--compare", a, _samples_run(tmp_path / "big", size=16), "--out", out], "differ in image size"),
        (["--compare", a, b, "--out", str(blocker / "samples.png")], "cannot write --out's folder"),
        (["--compare", a, b, "--out", str(tmp_path / "dir.png")], "dir.png is a folder; name a .png file"),
        (["--compare", a, b, "--out", str(tmp_path / "samples.jpg")], "--compare needs --out FILE.png"),
    ]:
        fails(ti.main, argv, message, capsys, str(tmp_path / "cmp"))
    drawn = []
    monkeypatch.setattr(image_data, "save_grid", lambda out, cells, names, titles: drawn.append((names, titles)))
    experiment.run(ti.main, ["--compare", a, b, "--out", out])
    experiment.run(ti.main, ["--compare", a, _samples_run(tmp_path / "three", tasks=3), "--out", out])
    assert drawn == [(["tr s0", "ewc s0"], ["Task 1 after T1", "Task 1 after T2"]),
                     (["tr s0", "tr s0"], ["Task 1 after T1", "Task 1 after its last task"])]


def test_imagenet_divergence_stops_in_seconds(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_imagenet.py"), *IM, "--lr", "1e6", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(err) == 1 and "non-finite" in err[0], proc.stderr
    assert err[0].startswith("error: task 1")
    assert not (out / "summary.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# fid.py


def _images(folder, n=3, size=8):
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def test_fid_cli(tmp_path, capsys):
    a = _images(tmp_path / "a")
    b = _images(tmp_path / "b")
    (b / "9.png").write_bytes(b"not a png")
    fails(fid.main, [str(a), str(b)], "cannot decode image", capsys, str(b))
    fails(fid.main, [str(a), str(tmp_path / "nope")], "not a folder of images", capsys, str(tmp_path / "nope"))
    fails(fid.main, [str(a), str(a), "--batch-size", "0"], "--batch-size", capsys, str(a))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"\x80junk")
    fails(fid.main, [str(a), str(a), "--inception-weights", str(weights)], "not a readable torch weights file",
          capsys, str(a))
    fails(fid.main, [str(a), "--save-stats", str(tmp_path / "no" / "dir" / "s.npz")], "cannot write --save-stats",
          capsys, str(tmp_path / "no"))
    nan = tmp_path / "nan.npz"
    np.savez(nan, mu=np.full(4, np.nan), sigma=np.eye(4))
    ok = tmp_path / "ok.npz"
    np.savez(ok, mu=np.zeros(4), sigma=np.eye(4))
    start = time.time()
    fails(fid.main, [str(nan), str(ok)], "not finite", capsys, str(ok))  # used to hang in sqrtm
    assert time.time() - start < 10
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    fails(fid.main, [str(tmp_path / "bad.npz"), str(ok)], "not a readable .npz", capsys, str(ok))
    fails(fid.main, [str(ok), str(ok), "--device", "bogus"], "--device must be auto, cpu or cuda[:i]", capsys,
          str(ok))
    if not torch.cuda.is_available():
        fails(fid.main, [str(ok), str(ok), "--device", "cuda"], "CUDA is not available", capsys, str(ok))


# ---------------------------------------------------------------------------------------------------------------
# metrics.py aggregate


def _summary(run_dir, **changes):
    s = metrics.build_summary("tr", 0, "cw10", ["a", "b"], [[0.9, None], [0.8, 0.7]], True, [], [10],
                              metrics.SUCCESS_THRESHOLDS)
    s.update(changes)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(s, f)
    return run_dir


@pytest.mark.parametrize("changes,message", [
    (dict(seed="zero"), "wrong type"),
    (dict(R=[[0.9, None], [0.8]]), "R must be 2 rows of 2"),
    (dict(R=[[0.9, None], [0.8, "x"]]), "non-numeric score"),
    (dict(average=None), "average is not a number"),
    (dict(task1_curve=[[1, 2, 3]]), "task1_curve"),
])
def test_aggregate_names_the_bad_file(changes, message, tmp_path, capsys):
    good = _summary(str(tmp_path / "good"))
    bad = _summary(str(tmp_path / "bad"), seed=1, **changes) if "seed" not in changes else _summary(
        str(tmp_path / "bad"), **changes)
    out = str(tmp_path / "agg")
    err = fails(metrics.main, ["aggregate", good, bad, "--out", out], message, capsys, out)
    assert os.path.join(bad, "summary.json") in err


def test_aggregate_truncated_and_missing(tmp_path, capsys):
    good = _summary(str(tmp_path / "good"))
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "summary.json").write_text('{"method": "tr", "seed"')
    out = str(tmp_path / "agg")
    fails(metrics.main, ["aggregate", good, str(cut), "--out", out], f"{cut}/summary.json is not readable JSON",
          capsys, out)
    fails(metrics.main, ["aggregate", good, str(tmp_path / "none"), "--out", out], "missing", capsys, out)


def test_aggregate_refuses_wrong_results(tmp_path, capsys):
    """aggregate: rejects a NaN score printed as "nan%", an unfinished run's summary (one of two tasks) counted as
    a one-task result, and an empty --out that silently wrote to another folder; each names the file or flag."""
    good = _summary(str(tmp_path / "good"))
    out = str(tmp_path / "agg")
    nan = _summary(str(tmp_path / "nan"), seed=1, R=[[0.9, None], [float("nan"), 0.7]])
    err = fails(metrics.main, ["aggregate", good, nan, "--out", out], "holds a non-finite score (nan)", capsys, out)
    assert os.path.join(nan, "summary.json") in err
    s = metrics.build_summary("tr", 2, "cw10", ["a", "b"], [[0.9, None]], True, [], [10], metrics.SUCCESS_THRESHOLDS)
    half = _summary(str(tmp_path / "half"), **{k: s[k] for k in ("seed", "R", "n_tasks_trained", "average")})
    fails(metrics.main, ["aggregate", good, half, "--out", out], f"{half}/summary.json is of an unfinished run (1 of "
                                                                f"2 tasks trained)", capsys, out)
    fails(metrics.main, ["aggregate", good, "--out", ""], "--out must not be empty", capsys, out)
