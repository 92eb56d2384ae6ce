"""Run-folder files and command-line errors, shared by every script: the ground floor (imports no project module).

    Parser          argparse whose errors are one line, "error: ...", with exit code 2
    require         ValueError(message) unless a condition holds: the scripts' bad-input check (exit 2 via Parser
                    or experiment.run)
    check_writable  a folder can be written, checked before anything is written
    Diverged        a non-finite value in training (experiment.run: one line, exit 2, the last checkpoint kept)
    atomic writes   text, JSON and torch files written to path + ".tmp", fsynced, then renamed over the path:
                    a reader sees the old file or the new one, never half
    JsonlLogger     metrics.jsonl, one JSON record per line, torn last lines dropped, cut back on resume
    Clock           a run's wall time in all, in training and in evaluation, kept in the loop state (resumes add)
    provenance      what made a run: git commit (and uncommitted changes), package versions, device, threads,
                    host, start time; config.json keeps one such record per start of the run, summary.json all
                    of them with the run's wall times (metrics.py aggregate names the commits a table mixes)
"""
import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time

# ----------------------------------------------------------------------------- command lines, bad input


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line ("error: ...") with exit code 2, for every command line of the project."""

    def error(self, message):
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def require(condition: bool, message: str) -> None:
    """Validation helper: ValueError(message) unless condition."""
    if not condition:
        raise ValueError(message)


def check_writable(path: str, what: str) -> None:
    """ValueError unless `path` is, or can be created as, a writable folder (nothing is created here)."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    require(os.path.isdir(parent) and os.access(parent, os.W_OK),
            f"cannot write {what} {path}: {parent} is not a writable folder")


class Diverged(Exception):
    """A non-finite value in training; experiment.run prints its one line and exits with code 2."""


# ----------------------------------------------------------------------------- atomic writes, the log


def atomic_write_text(path, text):
    """Write `text` to path + ".tmp", fsync, then os.replace: readers see the old file or the new one, never half."""
    atomic_write(path, "w", lambda f: f.write(text))


def atomic_write(path, mode, write):
    """Call write(f) on path + ".tmp" opened with `mode` ("w" text, "wb" bytes: np.savez, savefig, PIL), fsync,
    os.replace; no .tmp survives a failure."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")  # serialise first: a failure here touches no file


def atomic_torch_save(obj, path):
    import torch  # local: the aggregation CLI does not need torch

    atomic_write(path, "wb", lambda f: torch.save(obj, f))


def read_jsonl(path):
    """Records of a jsonl file; a partial last line (process killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn final write
            if line.strip():
                records.append(json.loads(line))
    return records


class JsonlLogger:
    """Append-only metrics.jsonl: one JSON object per line, flushed and fsynced at every `log`.

    A run killed mid-write leaves a partial last line; opening the logger drops it, so new records never glue
    onto it. On resume from a checkpoint at global step g, `truncate_after(g)` drops the records logged after
    the checkpoint (they will be logged again), so the file reads as one uninterrupted run.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                data = f.read()
            if data and not data.endswith(b"\n"):
                atomic_write_text(self.path, data[: data.rfind(b"\n") + 1].decode("utf-8"))

    def log(self, record):
        line = json.dumps(record) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, global_step):
        """Keep records with no "global_step" or record["global_step"] <= global_step; rewrite atomically."""
        if not os.path.exists(self.path):
            return
        kept = [r for r in read_jsonl(self.path) if r.get("global_step") is None or r["global_step"] <= global_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


# ----------------------------------------------------------------------------- provenance


PACKAGES = ("torch", "numpy", "metaworld", "mujoco")  # the versions a run records


def _git(*args):
    """stdout of `git args` in this file's repository, or None (no git, not a repository)."""
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), *args],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def provenance(device: str, device_name: str | None, threads: int) -> dict:
    """One start of a run: {"commit", "dirty" (tracked files changed since the commit), "versions" (python and
    PACKAGES), "device", "device_name" (the CPU's model or the GPU's name), "threads", "host", "started" (UTC,
    ISO 8601)}. commit and dirty are None outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
            "device": device, "device_name": device_name or _cpu_name(), "threads": threads,
            "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class Clock:
    """A run's wall time in all, in training steps and in evaluation (seconds), kept in the loop state
    (state["times"]) so that a resumed run adds to its sums; the time a stopped run spent after its last
    checkpoint is not counted. On CUDA a step's time includes waiting for earlier steps' kernels."""

    def __init__(self, state: dict):
        self.times = state.setdefault("times", {"wall_s": 0.0, "train_s": 0.0, "eval_s": 0.0})
        self.base, self.t0 = self.times["wall_s"], time.monotonic()

    def tick(self) -> dict:
        """Bring wall_s up to now (before a checkpoint and a summary); returns the times."""
        self.times["wall_s"] = self.base + time.monotonic() - self.t0
        return self.times

    @contextlib.contextmanager
    def timed(self, key: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[key] += time.perf_counter() - t
