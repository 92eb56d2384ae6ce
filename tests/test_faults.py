"""Faults, not bad input: a full disk at each kind of write, SIGTERM during training and during rollouts, a killed
environment worker, a killed demo-collection worker, a killed parent or worker of the toy's pool, a garbage
metrics.jsonl line on resume, an unexpected error. Each ends in ONE line on stderr with its exit code
(runfiles.EXIT_*), leaves no partial or temporary file, and the same command run again finishes with the
summary.json (without provenance) and metrics.jsonl of an uninterrupted run. Most cases run in-process on the smoke
presets with a writer made to fail or a signal sent to this process at a chosen step; the toy pool is killed in a
subprocess."""
import dataclasses
import fcntl
import glob
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import cw10_data
import experiment
import runfiles
import train_cw10 as cw
import train_toy
from conftest import result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location("inject", os.path.join(ROOT, "results", "faults", "inject.py"))
INJECT = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(INJECT)
TOY = ["--preset", "smoke", "--method", "tr", "--workers", "1"]
CW = ["--preset", "smoke", "--threads", "1", "--method", "replay"]


def ends(main, argv, code, capsys) -> str:
    """Run main through the endings in-process: exit `code`, exactly one line on stderr; returns it."""
    with pytest.raises(SystemExit) as e:
        experiment.run(main, argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == code and len(err.splitlines()) == 1, (e.value.code, err)
    return err


def finishes(main, argv, capsys) -> None:
    experiment.run(main, argv)
    capsys.readouterr()


def same_run(folder, reference) -> None:
    """The files a rerun leaves equal an uninterrupted run's; no temporary file anywhere."""
    assert result(os.path.join(folder, "summary.json")) == result(os.path.join(reference, "summary.json"))
    with open(os.path.join(folder, "metrics.jsonl")) as a, open(os.path.join(reference, "metrics.jsonl")) as b:
        assert a.read() == b.read()
    assert not glob.glob(os.path.join(folder, "**", "*.tmp"), recursive=True)


def full_disk(monkeypatch, name: str, after: int = 0) -> list:
    """Every write to a file whose name starts with `name` (the atomic writers' temporary files included), from the
    (after + 1)-th file opened on, raises OSError(ENOSPC) as a full disk does (results/faults/inject.py's writer,
    the one its measurement uses). Returns the list of paths failed."""
    failed = []
    monkeypatch.setattr(runfiles, "open", INJECT.full_disk_open(name, after, failed), raising=False)
    return failed


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy_ref"))
    experiment.run(train_toy.main, TOY + ["--out", out])
    return out


# ---------------------------------------------------------------------------------------------------------------
# a full disk


@pytest.mark.parametrize("name,after", [(".lock", 0), ("checkpoint.pt", 1), ("metrics.jsonl", 5), ("samples.npz", 0),
                                        ("summary.json", 0), ("table1.md", 0), ("figure2_toy.png", 0)])
def test_full_disk_at_each_kind_of_write(name, after, tmp_path, monkeypatch, capsys, toy_reference):
    """A full disk while taking the run folder's lock, writing a checkpoint, a metrics record, the samples, the
    summary, a table or a figure: rejects a traceback, exit 1, a line that names no file, a temporary or
    half-written file left behind, and a rerun that does not finish the run's files as an uninterrupted run does."""
    out = str(tmp_path / "toy")
    failed = full_disk(monkeypatch, name, after)
    err = ends(train_toy.main, TOY + ["--out", out], runfiles.EXIT_FAULT, capsys)
    assert failed, f"no write to {name} was made to fail"
    assert err.startswith("error: cannot write ") and name in err and "No space left on device" in err, err
    assert "free space and rerun the same command" in err and "(traceback: " in err, err
    log = err.split("(traceback: ")[1].rstrip(")")
    assert "OSError" in open(log).read()
    assert not glob.glob(os.path.join(out, "**", "*.tmp"), recursive=True)
    run = os.path.join(out, "tr-s0")
    if os.path.exists(os.path.join(run, "metrics.jsonl")):  # no torn record
        assert open(os.path.join(run, "metrics.jsonl"), "rb").read().endswith(b"\n") or \
            os.path.getsize(os.path.join(run, "metrics.jsonl")) == 0
    monkeypatch.undo()
    finishes(train_toy.main, TOY + ["--out", out], capsys)
    same_run(run, os.path.join(toy_reference, "tr-s0"))
    for table in ("table1.md", "table2.md"):
        a, b = (open(os.path.join(d, table)).read() for d in (out, toy_reference))
        assert a.split("Made at commit")[0] == b.split("Made at commit")[0]


def test_full_disk_while_caching_demos(tmp_path, monkeypatch):
    """A full disk while the demo cache is written: rejects a traceback-only failure (it must be a Fault naming
    the file), a temporary file left in the cache, and a cache that is not written by the next call."""
    cfg = dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=str(tmp_path / "data"))
    full_disk(monkeypatch, "cw10_hammer")
    with pytest.raises(runfiles.Fault, match="cannot write .*cw10_hammer.*No space left on device"):
        cw10_data.ensure_demos(cfg, ["hammer"])
    assert os.listdir(tmp_path / "data") == []
    monkeypatch.undo()
    cw10_data.ensure_demos(cfg, ["hammer"])
    assert os.listdir(tmp_path / "data") == [os.path.basename(cw10_data.demo_path(cfg, "hammer"))]


def proc_stat(pid) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> list[int]:
    """The processes whose parent is pid and whose command line is a multiprocessing worker's (spawn_main)."""
    found = []
    for d in glob.glob("/proc/[0-9]*"):
        stat = proc_stat(os.path.basename(d))
        if stat is None or int(stat[1]) != pid:
            continue
        try:
            with open(f"{d}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.append(int(os.path.basename(d)))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def test_killed_demo_worker(tmp_path):
    """kill -9 of a demo-collection worker: rejects a collection that waits forever for the lost episodes
    (multiprocessing.Pool did), anything but a Fault naming what the worker did, workers left running, and a
    cache file written from part of the demos."""
    cfg = dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=str(tmp_path / "data"), workers=2,
                              demos_per_task=200)
    killed = []

    def kill_first_worker():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for pid in children(os.getpid()):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    start = time.time()
    with pytest.raises(runfiles.Fault, match="^a worker process collecting hammer's demos died; rerun the same "
                                             "command to resume$"):
        cw10_data.ensure_demos(cfg, ["hammer"])
    killer.join()
    assert killed and time.time() - start < 60
    deadline = time.time() + 10
    while time.time() < deadline and children(os.getpid()):
        time.sleep(0.05)
    assert not children(os.getpid()), "a demo worker outlived the failed collection"
    assert not os.path.exists(tmp_path / "data") or os.listdir(tmp_path / "data") == []


def test_atomic_writers_of_two_processes_do_not_collide(tmp_path):
    """Two processes writing the same file at once (two runs filling one demo cache): rejects a temporary file
    shared by both, where one process's os.replace finds the other's file gone (FileNotFoundError)."""
    code = ("import sys, runfiles\nfor i in range(300):\n"
            "    runfiles.atomic_write(sys.argv[1], 'wb', lambda f: f.write(b'x' * 100000))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "same.npz")], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert os.listdir(tmp_path) == ["same.npz"]


# ---------------------------------------------------------------------------------------------------------------
# SIGTERM and Ctrl-C


def signal_at(monkeypatch, sig, global_step):
    """Send `sig` to this process right after training step `global_step` (inside the step's deferral)."""
    step = experiment.train_step

    def patched(learner, batch, replay_batch, generator, state, *args):
        step(learner, batch, replay_batch, generator, state, *args)
        if state["global_step"] == global_step:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(experiment, "train_step", patched)


@pytest.mark.parametrize("sig,code,line", [
    (signal.SIGTERM, runfiles.EXIT_TERMINATED, "stopped by SIGTERM at task 1, step 5; checkpoint written; rerun"),
    (signal.SIGINT, runfiles.EXIT_INTERRUPTED, "interrupted at task 2, step 3; checkpoint written; rerun"),
])
def test_signal_during_training_checkpoints_the_step_and_resumes(sig, code, line, tmp_path, monkeypatch, capsys,
                                                                  toy_reference):
    """SIGTERM (Slurm's preemption) or Ctrl-C in a training step: rejects a run that dies without a checkpoint at
    the signal, a half-applied step, a line other than where it stopped, exit codes other than 143 / 130, and a
    resume that differs from the uninterrupted run."""
    out = str(tmp_path / "toy")
    signal_at(monkeypatch, sig, 5 if sig == signal.SIGTERM else 15)
    err = ends(train_toy.main, TOY + ["--out", out], code, capsys)
    assert err.startswith(line), err
    import torch
    ck = torch.load(os.path.join(out, "tr-s0", "checkpoint.pt"), weights_only=False)
    assert (ck["state"]["task"], ck["state"]["step"]) == ((0, 5) if sig == signal.SIGTERM else (1, 3))
    assert not os.path.exists(os.path.join(out, "tr-s0", "summary.json"))
    monkeypatch.undo()
    finishes(train_toy.main, TOY + ["--out", out], capsys)
    same_run(os.path.join(out, "tr-s0"), os.path.join(toy_reference, "tr-s0"))


@pytest.fixture(scope="module")
def cw_data(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("cw10_data"))
    cw10_data.ensure_demos(dataclasses.replace(cw.Config(**cw.PRESETS["smoke"]), data_dir=d), ["hammer", "push-wall"])
    return d


@pytest.fixture(scope="module")
def cw_reference(tmp_path_factory, cw_data):
    out = str(tmp_path_factory.mktemp("cw_ref"))
    experiment.run(cw.main, CW + ["--out", out, "--data-dir", cw_data])
    return out


def test_sigterm_during_rollouts_and_a_killed_worker_resume(tmp_path, monkeypatch, capsys, cw_data, cw_reference):
    """SIGTERM while the replay rollouts of Task 1's boundary run (in environment worker processes), then an
    environment worker killed (SIGKILL) in a later rollout: rejects a traceback, a run that waits for the
    boundary to end, a line that names a checkpoint that does not exist, an exit code other than 143 / 74,
    a BrokenPipeError from a worker, and a resume that differs from the uninterrupted run."""
    out = str(tmp_path / "cw")
    argv = CW + ["--out", out, "--data-dir", cw_data, "--env-workers", "1"]
    episodes = cw10_data.run_episodes

    def term_in_replay(model, sched, cfg, task, n, kind, *args, **kwargs):
        if kind == cw10_data.EPISODES_REPLAY:
            os.kill(os.getpid(), signal.SIGTERM)
        return episodes(model, sched, cfg, task, n, kind, *args, **kwargs)

    monkeypatch.setattr(cw10_data, "run_episodes", term_in_replay)
    err = ends(cw.main, argv, runfiles.EXIT_TERMINATED, capsys)
    assert err == ("stopped by SIGTERM at task 1, step 8; rerun the same command to resume from the checkpoint at "
                   "task 1, step 6"), err
    monkeypatch.undo()
    step, killed = cw10_data.EnvPool.step, []

    def kill_worker(self, actions, stop_on_success):
        if not killed and len(self.procs):
            killed.append(self.procs[0].pid)
            os.kill(self.procs[0].pid, signal.SIGKILL)
            time.sleep(0.5)
        return step(self, actions, stop_on_success)

    monkeypatch.setattr(cw10_data.EnvPool, "step", kill_worker)
    err = ends(cw.main, argv, runfiles.EXIT_FAULT, capsys)
    assert err.startswith(f"error: environment worker 0 (process {killed[0]}) died (killed by SIGKILL); rerun the "
                          f"same command to resume"), err
    assert "BrokenPipeError" not in err and os.path.exists(os.path.join(out, "error.log"))
    monkeypatch.undo()
    finishes(cw.main, argv, capsys)
    same_run(out, cw_reference)


# ---------------------------------------------------------------------------------------------------------------
# the toy's pool: its workers end with their parent


def lock_holder(folder: str):
    """The pid written in folder/.lock if some process holds its lock, else None."""
    try:
        with open(os.path.join(folder, ".lock")) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                return int(f.read().strip() or 0)
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has ended


@pytest.mark.parametrize("target,sig", [("parent", signal.SIGKILL), ("parent", signal.SIGTERM),
                                        ("worker", signal.SIGKILL)])
def test_toy_pool_workers_end_with_their_parent(target, sig, tmp_path):
    """kill -9 or SIGTERM of train_toy.py while its pool trains two runs, or kill -9 of one of its workers: rejects
    workers that outlive the parent (they held the run folders' locks, so the rerun was refused "in use by process
    ..."), BrokenPipeError tracebacks, (SIGTERM) an ending other than one line and exit 143, and (a dead worker) a
    parent that waits forever for the lost run (multiprocessing.Pool did) or ends other than in one line and 74."""
    out = tmp_path / "toy"
    cmd = [sys.executable, os.path.join(ROOT, "train_toy.py"), "--preset", "smoke", "--method", "finetune,ewc",
           "--workers", "2", "--steps-per-task", "3000", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folders = [str(out / "finetune-s0"), str(out / "ewc-s0")]
    deadline = time.time() + 120
    while time.time() < deadline and not all(lock_holder(f) for f in folders):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    workers = [lock_holder(f) for f in folders]
    assert all(workers) and proc.pid not in workers
    if target == "parent":
        proc.send_signal(sig)
    else:
        os.kill(workers[0], sig)
    err = proc.communicate(timeout=60)[1]
    deadline = time.time() + 10
    while time.time() < deadline and any(lock_holder(f) or alive(pid) for f, pid in zip(folders, workers)):
        time.sleep(0.05)
    assert not any(lock_holder(f) for f in folders), "a worker outlived its parent and holds a run folder's lock"
    assert not any(alive(pid) for pid in workers), "a worker outlived its parent"
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    if sig == signal.SIGTERM:
        assert proc.returncode == runfiles.EXIT_TERMINATED and err.strip() == \
            "stopped by SIGTERM; rerun the same command to resume", err
    if target == "worker":
        assert proc.returncode == runfiles.EXIT_FAULT and len(err.strip().splitlines()) == 1 and err.startswith(
            "error: a worker process training a toy run died; rerun the same command to resume (traceback: "), err


# ---------------------------------------------------------------------------------------------------------------
# a resume checks every file before it changes one


def test_garbage_log_line_on_resume_changes_nothing(tmp_path, monkeypatch, capsys, toy_reference):
    """A resumed run whose metrics.jsonl has a garbage middle line: rejects rewriting config.json or cutting the
    log before failing, and a message that names no file (it was "Expecting value: line 1 column 1")."""
    out = str(tmp_path / "toy")
    signal_at(monkeypatch, signal.SIGTERM, 14)
    ends(train_toy.main, TOY + ["--out", out], runfiles.EXIT_TERMINATED, capsys)
    monkeypatch.undo()
    run = os.path.join(out, "tr-s0")
    log = os.path.join(run, "metrics.jsonl")
    lines = open(log).read().splitlines(keepends=True)
    lines[2] = "#garbage\n"
    with open(log, "w") as f:
        f.write("".join(lines) + '{"torn')
    before = {n: (open(os.path.join(run, n), "rb").read(), os.stat(os.path.join(run, n)).st_mtime_ns)
              for n in ("config.json", "metrics.jsonl", "checkpoint.pt")}
    err = ends(train_toy.main, TOY + ["--out", out], runfiles.EXIT_BAD_INPUT, capsys)
    assert err.startswith(f"error: {log} line 3 is not a JSON record"), err
    assert before == {n: (open(os.path.join(run, n), "rb").read(), os.stat(os.path.join(run, n)).st_mtime_ns)
                      for n in before}
    shutil.rmtree(run)
    finishes(train_toy.main, TOY + ["--out", out], capsys)
    same_run(run, os.path.join(toy_reference, "tr-s0"))


# ---------------------------------------------------------------------------------------------------------------
# a bug, and printing


def test_unexpected_error_is_one_line_naming_its_log(tmp_path, monkeypatch, capsys):
    """A bug (an exception no check expects) in a run that began: rejects a traceback on the screen, exit codes
    other than 1, and a line that does not name the log file holding the traceback."""
    out = str(tmp_path / "toy")

    def broken(*args, **kwargs):
        raise RuntimeError("an expected bug")

    monkeypatch.setattr(train_toy.fisher, "estimate_on_task", broken)
    err = ends(train_toy.main, TOY + ["--out", out], runfiles.EXIT_BUG, capsys)
    log = os.path.join(out, "tr-s0", "error.log")
    assert err == f"error: unexpected RuntimeError: an expected bug (a bug; traceback: {log})", err
    assert "Traceback" in open(log).read() and "estimate_on_task" not in err


def test_finished_run_with_an_unprintable_out_exits_0(tmp_path):
    """A strict output encoding (PYTHONIOENCODING=utf-8) and a non-UTF-8 --out: rejects a run that wrote every file
    and then exits 2 with "'utf-8' codec can't encode"."""
    out = os.path.join(os.fsencode(tmp_path), b"run-\xff")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_toy.py"), *TOY, "--out", out], cwd=ROOT,
                          capture_output=True, timeout=300, env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert os.path.exists(os.path.join(out, b"tr-s0", b"summary.json"))
