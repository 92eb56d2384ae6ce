"""Every command of the README runs as written on a fresh clone, or a named test runs it.

The commands are read from the README's ```bash blocks, so a command added there without a way of running it here
fails `test_every_readme_command_is_exercised`. They run in a scratch folder that links the repository's files (the
runs, caches and tables they write stay there), all at once:
    FINISH   run to the end: exit 0
    STARTS   long runs (minutes to GPU-days): still running after START_S seconds, i.e. past the flag parsing, the
             configuration checks and the data set-up that bad input would stop (then stopped)
    FAILS    commands with a placeholder (DIR, a Slurm partition on a machine without one): the one-line error and
             the exit code the README's endings promise
    ELSEWHERE run by the test named (the same command, or the same code path with a smaller preset)
"""
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_S = 15

FINISH = {"python derivation.py", "python metrics.py aggregate runs/toy-paper/*-s? --out tables"}
STARTS = {"python tests/planted_bugs.py", "python train_toy.py", "python train_cw10.py --method tr --preset medium",
          "python train_cw10.py --method tr", "python train_imagenet.py --method tr --preset small",
          "python sweep.py toy --methods all --seeds 0 1 2"}
FAILS = {"python train_imagenet.py --method tr --data-dir DIR": (2, "error: "),
         "python sweep.py cw10 --preset paper --methods all --seeds 0 1 2 --executor slurm --partition PART "
         "--gpus-per-run 1 --cpus-per-run 8 --mem-gb 64 --time-min 1440": (74, "error: Slurm did not take"),
         "python sweep.py imagenet --preset paper --methods all --seeds 0 1 2 --executor slurm --partition PART "
         "--gpus-per-run 1 --cpus-per-run 8 --mem-gb 64 --time-min 1440 -- --data-dir /path/to/imagenet32":
             (74, "error: Slurm did not take")}
ELSEWHERE = {"pip install -r requirements.txt": ".ci/run", "python -m pytest": ".ci/run",
             "python train_cw10.py --method tr --preset smoke": "tests/test_cw10.py::test_smoke_every_method"}
# what the aggregate command reads: the toy's runs, as `python train_toy.py` writes them (here at the smoke preset)
SETUP = "python train_toy.py --preset smoke --out runs/toy-paper"


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks: comments dropped, continued lines joined."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [" ".join(line.split("#")[0].split()) for line in lines if line.split("#")[0].strip()]


def test_every_readme_command_is_exercised():
    """Catches a README command that nothing runs (added, or edited so that it no longer matches its entry here)."""
    commands = readme_commands()
    assert len(commands) >= 10, commands
    known = FINISH | STARTS | set(FAILS) | set(ELSEWHERE)
    assert [c for c in commands if c not in known] == []
    for command, where in ELSEWHERE.items():
        path, _, name = where.partition("::")
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            assert name in f.read(), where


def _scratch(folder) -> str:
    """A new folder holding links to the repository's files: a command's `runs/`, `data/` and tables land there."""
    folder.mkdir()
    for name in os.listdir(ROOT):
        if name not in (".git", "runs", "data", "__pycache__") and not name.startswith("."):
            os.symlink(os.path.join(ROOT, name), folder / name)
    return str(folder)


def _start(command: str, cwd: str) -> subprocess.Popen:
    """The command in the background, its own process group; stdout and stderr to files in its folder (a pipe
    nobody reads would stall a chatty command)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    with open(os.path.join(cwd, "stdout.txt"), "w") as out, open(os.path.join(cwd, "stderr.txt"), "w") as err:
        return subprocess.Popen(command.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=cwd, env=env,
                                stdout=out, stderr=err, start_new_session=True)


def _stderr(cwd: str) -> str:
    with open(os.path.join(cwd, "stderr.txt"), encoding="utf-8", errors="replace") as f:
        return f.read()


def test_readme_commands_run_as_written(tmp_path):
    """Each command runs as written: the short ones to exit 0, the long ones past their start, the placeholder ones
    to their one-line error. Catches a renamed script or flag, a preset the README names but the script lacks, and
    a command whose files the next command cannot find."""
    commands = sorted(set(readme_commands()) - set(ELSEWHERE))
    cwd = {c: _scratch(tmp_path / f"command{i}") for i, c in enumerate(commands)}  # one folder each: no races
    for c in commands:
        if c in FINISH and "toy-paper/" in c:
            setup = _start(SETUP, cwd[c])
            assert setup.wait(timeout=300) == 0, _stderr(cwd[c])[-2000:]
    procs = {c: _start(c, cwd[c]) for c in commands}
    time.sleep(START_S)
    for command in STARTS & set(commands):
        proc = procs[command]
        alive = proc.poll() is None
        if alive:
            os.killpg(proc.pid, 9)
            proc.wait()
        assert alive, f"{command} stopped early ({proc.returncode}): {_stderr(cwd[command])[-2000:]}"
    for command in (FINISH | set(FAILS)) & set(commands):
        proc = procs[command]
        try:
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        err = _stderr(cwd[command])
        code, line = FAILS.get(command, (0, None))
        assert proc.returncode == code, f"{command}: exit {proc.returncode}: {err[-2000:]}"
        if line:
            assert err.strip().splitlines()[-1].startswith(line), err[-2000:]


@pytest.mark.parametrize("command", sorted(FINISH | STARTS | set(FAILS)))
def test_readme_table_names_real_scripts(command):
    """The scripts the README runs exist (a cheap check that fails before the slow one above)."""
    script = command.split()[1]
    assert os.path.isfile(os.path.join(ROOT, script)), script
