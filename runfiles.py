"""Run-folder files and command-line errors, shared by every script: the ground floor (imports no project module).

    Parser          argparse whose errors are one line, "error: ...", with exit code 2
    require         ValueError(message) unless a condition holds: the scripts' bad-input check (exit 2 via Parser
                    or experiment.run)
    check_writable  a folder can be written, checked before anything is written
    Diverged        a non-finite value in training (experiment.run: one line, exit 2, the last checkpoint kept)
    atomic writes   text, JSON and torch files written to path + ".tmp", fsynced, then renamed over the path:
                    a reader sees the old file or the new one, never half
    JsonlLogger     metrics.jsonl, one JSON record per line, torn last lines dropped, cut back on resume
"""
import argparse
import json
import os
import sys

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
