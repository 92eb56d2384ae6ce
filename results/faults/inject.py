"""Run a script with a full disk at one kind of write: `python results/faults/inject.py NAME AFTER SCRIPT ARGS...`
runs SCRIPT's main through runfiles.run, with every write to a file whose name starts with NAME, from the
(AFTER + 1)-th such file on, failing with OSError(ENOSPC) as a full disk does. `full_disk_open` is that writer;
tests/test_faults.py uses it too."""
import errno
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import runfiles  # noqa: E402



def full_disk_open(name: str, after: int, failed: list):
    """An `open` whose files named NAME... (opened for writing, from the (after + 1)-th on) raise OSError(ENOSPC) at
    their first write; the paths that failed are appended to `failed`."""
    real_open, seen = open, []

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            failed.append(self.f.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def patched(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if any(c in mode for c in "wa") and os.path.basename(os.fspath(path)).startswith(name):
            seen.append(path)
            if len(seen) > after:
                return Full(f)
        return f

    return patched


if __name__ == "__main__":
    name, after, script, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    runfiles.open = full_disk_open(name, after, [])
    sys.argv = [script, *argv]
    runfiles.run(importlib.import_module(os.path.basename(script)[:-3]).main, argv)
