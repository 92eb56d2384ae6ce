"""Run-folder files, command-line errors and every script's endings: the ground floor (imports no project module).

    Parser          argparse whose errors are one line, "error: ...", with exit code 2
    require         ValueError(message) unless a condition holds: the scripts' bad-input check (exit 2)
    check_writable  a folder can be written, checked before anything is written; check_device: --device's value
    lock_folder     one run per folder: an exclusive lock on folder/.lock, naming the process that holds it
    atomic writes   text, JSON, torch and any other files written to a temporary file of this process beside the
                    path, fsynced, then renamed over the path: a reader sees the old file or the new one, never
                    half; the temporary file is removed on any error, and a failed write is a Fault naming the path
    JsonlLogger     metrics.jsonl, one JSON record per line, torn last lines dropped, cut back on resume
    Clock           a run's wall time in all, in training and in evaluation, kept in the loop state (resumes add)
    provenance      what made a run: git commit (and uncommitted changes), package versions, device, threads,
                    host, start time; config.json keeps one such record per start of the run, summary.json all
                    of them with the run's wall times (metrics.py aggregate names the commits a table mixes)
    endings         run(main): every failure of a script ends in one line on stderr and an exit code (EXIT_*):
                    2 bad input (nothing written), 3 divergence (Diverged), 74 a fault of the machine (Fault,
                    OSError: a full disk, an unreadable file, a dead worker), 130 Ctrl-C, 143 SIGTERM (both: a
                    checkpoint at the next safe point, then "rerun the same command to resume"), 1 a bug (the
                    line names the log file with the traceback). Workers die_with_parent; worker_pool fails, not
                    hangs, when one dies.
"""
import argparse
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

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


def lock_folder(folder: str):
    """The open, exclusively locked (flock) folder/.lock holding this process's id; released when closed or when
    the process ends. ValueError naming the holder if another process has it (one run per folder)."""
    f = open(os.path.join(folder, ".lock"), "a+")  # not inherited by spawned or exec'd processes (PEP 446)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ValueError(f"{folder} is in use by process {holder} (one run per folder)") from None
    try:
        f.truncate(0)  # "a+": the write goes to the (new) end
        f.write(str(os.getpid()))
        f.flush()
    except OSError as e:  # a full disk
        with contextlib.suppress(OSError):
            f.close()  # closes the file even where its flush fails again
        raise io_fault(e, f.name) from e
    return f


def check_device(device: str | None) -> None:
    """ValueError unless `device` is None, auto, cpu or cuda[:i] with CUDA available (--device of every script)."""
    import torch  # local: the aggregation CLI does not need torch
    if device is None:
        return
    require(device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", device) is not None,
            f"--device must be auto, cpu or cuda[:i], got {device!r}")
    require(not device.startswith("cuda") or torch.cuda.is_available(), f"--device {device} but CUDA is not available")
    require(not device.startswith("cuda:") or int(device[5:]) < torch.cuda.device_count(),
            f"--device {device} but this machine has {torch.cuda.device_count()} CUDA device(s)")


# ----------------------------------------------------------------------------- atomic writes, the log


class _Recording:
    """A file whose write() remembers the OSError it raised: torch.save turns a full disk into a RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def atomic_write_text(path, text):
    """Write `text` atomically (atomic_write): readers see the old file or the new one, never half."""
    atomic_write(path, "w", lambda f: f.write(text))


def atomic_write(path, mode, write):
    """Call write(f) on a temporary file beside `path` (path.<pid>.tmp: two processes never share one) opened
    with `mode` ("w" text, "wb" bytes: np.savez, savefig, PIL), fsync, os.replace. No temporary file survives a
    failure; an OSError (a full disk, no permission) raises a Fault naming `path`."""
    path = os.fspath(path)
    tmp, f = f"{path}.{os.getpid()}.tmp", None
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as raw:
            f = _Recording(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise io_fault(e, path) from e
    except Exception as e:
        if f is None or f.error is None:
            raise
        raise io_fault(f.error, path) from e
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")  # serialise first: a failure here touches no file


def atomic_torch_save(obj, path):
    import torch  # local: the aggregation CLI does not need torch
    atomic_write(path, "wb", lambda f: torch.save(obj, f))


def read_jsonl(path):
    """Records of a jsonl file; a partial last line (process killed mid-write) is skipped. ValueError naming the
    file and line if a complete line is not a JSON object (a corrupt file)."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # torn final write
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    records.append(None)
                require(isinstance(records[-1], dict), f"{path} line {n} is not a JSON record (a corrupt file); "
                                                       f"delete the run folder to start over, or use another --out")
    return records


class JsonlLogger:
    """Append-only metrics.jsonl: one JSON object per line, flushed and fsynced at every `log`; `records` counts
    the file's records (a checkpoint keeps the count).

    A run killed mid-write leaves a partial last line; opening the logger drops it, so new records never glue
    onto it; a failed write (a full disk) cuts the file back to its last whole record. On resume from a checkpoint,
    `keep(n)` (or, for a checkpoint without the count, `truncate_after(global step)`) drops the records logged after
    the checkpoint (they will be logged again), so the file reads as one uninterrupted run.
    """

    def __init__(self, path):
        self.path, self.records = os.fspath(path), 0
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            self.records = len(read_jsonl(self.path))
            with open(self.path, "rb") as f:
                data = f.read()
            if data and not data.endswith(b"\n"):
                atomic_write(self.path, "wb", lambda f: f.write(data[: data.rfind(b"\n") + 1]))

    def log(self, record):
        line = (json.dumps(record) + "\n").encode("utf-8")
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        try:
            with open(self.path, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            raise io_fault(e, self.path) from e
        self.records += 1

    def _rewrite(self, kept):
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.records = len(kept)

    def keep(self, n):
        """Keep the first n records; rewrite atomically."""
        if os.path.exists(self.path):
            self._rewrite(read_jsonl(self.path)[:n])

    def truncate_after(self, global_step):
        """Keep records with no "global_step" or record["global_step"] <= global_step; rewrite atomically."""
        if os.path.exists(self.path):
            self._rewrite([r for r in read_jsonl(self.path)
                           if r.get("global_step") is None or r["global_step"] <= global_step])


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


# ----------------------------------------------------------------------------- endings

EXIT_BUG, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAULT, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 74, 130, 143
#   74 is sysexits.h's EX_IOERR; 130 and 143 are the shells' 128 + SIGINT and 128 + SIGTERM


class Diverged(Exception):
    """A non-finite value in training: one line naming task and step, exit 3, no summary written."""


class Fault(Exception):
    """The machine failed a run, not its input (a full disk, an unreadable or unwritable file, a worker process that
    died): one line naming what failed and what to do, exit 74, the traceback in the run's error.log."""


class Stopped(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: raised at the next safe point of a training loop (after its checkpoint), or at
    once outside one. A KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def io_fault(e: OSError, path, doing: str = "write") -> Fault:
    """The Fault of an OSError on `path`: what failed, and what to do about it."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free space and rerun the same command"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "make it writable or choose another folder, then rerun"
    else:
        todo = "rerun the same command once that is fixed"
    return Fault(f"cannot {doing} {path}: {e.strerror or e}; {todo}")


def term_with_parent() -> None:
    """This process gets SIGTERM when its parent ends, however it ends (Linux prctl PR_SET_PDEATHSIG; elsewhere
    nothing)."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "prctl"):
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def die_with_parent(parent_pid: int) -> None:
    """In a worker process: SIGTERM (default action: exit at once, no traceback) when its parent ends, however it
    ends (Linux prctl PR_SET_PDEATHSIG), and with it any run folder lock it holds (the toy's pool); Ctrl-C is the
    parent's to handle. Exits at once if the parent is already gone. Locks are opened close-on-exec (PEP 446), so
    spawned workers inherit none, and the toy's pool forks before any is taken."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    term_with_parent()
    if os.getppid() != parent_pid:  # the parent ended before the prctl
        os._exit(0)


@contextlib.contextmanager
def worker_pool(workers: int, start_method: str = "spawn"):
    """A process pool whose workers die_with_parent, killed if the block raises (else exit waits for their tasks).
    Not multiprocessing.Pool: when a worker dies (killed, out of memory) Pool waits forever for the lost task, while
    ProcessPoolExecutor fails every pending result (BrokenProcessPool), which pool_results makes a Fault."""
    pool = concurrent.futures.ProcessPoolExecutor(workers, multiprocessing.get_context(start_method),
                                                  initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        for proc in list((pool._processes or {}).values()):  # no public way to stop a running task
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def pool_results(results, what: str):
    """Yield from a worker_pool's results (its map, or future.result() calls); a dead worker: a Fault."""
    try:
        yield from results
    except concurrent.futures.BrokenExecutor:  # BrokenProcessPool
        raise Fault(f"a worker process {what} died; rerun the same command to resume") from None


_STOPS = {"defer": False, "pending": None, "ending": False}
_RUN = {"folder": None}  # the running experiment's folder (task, step, saved, out, began) for the one line


def _on_signal(signum, frame):
    if _STOPS["ending"]:
        return
    if _STOPS["defer"] and _STOPS["pending"] is None:  # a second signal does not wait
        _STOPS["pending"] = signum
        return
    raise Stopped(signum)


def defer_stops() -> None:
    """Ctrl-C and SIGTERM wait until stop_point() (a training step in flight finishes)."""
    _STOPS["defer"] = True


def stop_pending() -> bool:
    return _STOPS["pending"] is not None


def stop_point() -> None:
    """The safe point after a training step (its checkpoint written if stop_pending()): raise Stopped for a signal
    that arrived since defer_stops(); signals are no longer deferred."""
    signum, _STOPS["defer"], _STOPS["pending"] = _STOPS["pending"], False, None
    if signum is not None:
        raise Stopped(signum)


def track(folder):
    """The run folder the endings speak of (experiment.RunFolder: out, began, task, step, saved); returns it."""
    _RUN["folder"] = folder
    return folder


def _traceback_file(exc: BaseException) -> str | None:
    """Append `exc`'s traceback to the run folder's error.log (a run that began), else to a new temporary file;
    the path, or None if neither can be written."""
    folder = _RUN["folder"]
    text = (f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(sys.argv)}\n"
            + "".join(traceback.format_exception(exc)))
    try:
        if folder is not None and folder.began:
            path = os.path.join(folder.out, "error.log")
            with open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
        else:
            fd, path = tempfile.mkstemp(prefix=f"{os.path.basename(sys.argv[0] or 'python')}-", suffix=".log")
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
    except OSError:
        return None
    return path


def _where() -> tuple[str, str]:
    """(" at task k, step s" or "", what the checkpoint on disk means for a rerun)."""
    folder = _RUN["folder"]
    if folder is None:
        return "", "rerun the same command to resume"
    at = f" at task {folder.task + 1}, step {folder.step}"
    if folder.saved is None:
        return at, "no checkpoint yet: rerun the same command to start over"
    if folder.saved == (folder.task, folder.step):
        return at, "checkpoint written; rerun the same command to resume"
    return at, f"rerun the same command to resume from the checkpoint at task {folder.saved[0] + 1}, " \
               f"step {folder.saved[1]}"


def _end(code: int, line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    raise SystemExit(code)


def run(main, argv=None) -> None:
    """Call main(argv) and turn every failure into one line on stderr and an exit code (EXIT_*): bad input
    (ValueError) "error: ...", 2; divergence "error: ... non-finite ...", 3, no summary; a fault (Fault, OSError)
    "error: <what failed>; <what to do> (traceback: error.log)", 74; Ctrl-C "interrupted at task k, step s;
    ...resume", 130; SIGTERM "stopped by SIGTERM at task k, step s; ...resume", 143; any other exception "error:
    unexpected <type>: <message> (a bug; traceback: <file>)", 1. Output that cannot be encoded is escaped."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # a run that finished never fails on how a path prints
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can be set there only
        handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    _STOPS.update(defer=False, pending=None, ending=False)
    _RUN["folder"] = None
    try:
        main(argv)
    except Stopped as e:
        _STOPS["ending"] = True
        at, todo = _where()
        if e.signum == signal.SIGINT:  # a new line after the terminal's ^C
            _end(EXIT_INTERRUPTED, f"\ninterrupted{at}; {todo}")
        _end(EXIT_TERMINATED, f"stopped by {signal.Signals(e.signum).name}{at}; {todo}")
    except KeyboardInterrupt:
        _STOPS["ending"] = True
        at, todo = _where()
        _end(EXIT_INTERRUPTED, f"\ninterrupted{at}; {todo}")
    except ValueError as e:  # bad input: checked before anything is written
        _STOPS["ending"] = True
        _end(EXIT_BAD_INPUT, f"error: {e}")
    except Diverged as e:
        _STOPS["ending"] = True
        folder = _RUN["folder"]  # None in the parent of the toy's pool: its runs' folders are the workers'
        kept = "" if folder is None else ", no checkpoint was written" if folder.saved is None else \
            f", the last checkpoint (task {folder.saved[0] + 1}, step {folder.saved[1]}) is kept"
        _end(EXIT_DIVERGED, f"error: {e}; stopped, no summary written{kept}")
    except (Fault, OSError) as e:
        _STOPS["ending"] = True
        log = _traceback_file(e)
        message = e if isinstance(e, Fault) else io_fault(e, e.filename or "a file", "read or write")
        _end(EXIT_FAULT, f"error: {message}" + (f" (traceback: {log})" if log else ""))
    except Exception as e:
        _STOPS["ending"] = True
        log = _traceback_file(e)
        _end(EXIT_BUG, f"error: unexpected {type(e).__name__}: {e} (a bug; traceback: {log or 'not written'})")
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        _STOPS.update(defer=False, pending=None, ending=False)
