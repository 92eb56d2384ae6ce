"""sweep.py: the toy's whole grid end to end, a sweep killed midway and rerun, bad input, the Slurm job parameters."""
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

import sweep
from conftest import result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = ["toy", "--preset", "smoke", "--seeds", "0", "1", "--jobs", "2"]


def run_sweep(args, out_root, **kwargs):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "sweep.py"), "--out-root", str(out_root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, **kwargs)


def summaries(out_root, methods, seeds=(0, 1)):
    """{(method, seed, file): summary numbers} of the toy's runs under out_root (FD and sliced Wasserstein)."""
    return {(m, s, name): result(os.path.join(out_root, f"toy-smoke-{m}-s{s}", f"{m}-s{s}", name))
            for m in methods for s in seeds for name in ("summary.json", os.path.join("sw", "summary.json"))}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """`sweep.py toy --methods all --seeds 0 1` run once, uninterrupted: (out_root, output, seconds)."""
    out_root = tmp_path_factory.mktemp("grid")
    start = time.time()
    proc = run_sweep([*GRID, "--methods", "all"], out_root)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    return out_root, output, time.time() - start


def test_whole_toy_grid(grid):
    """Catches: a run started with the wrong flags or folder, a run not waited for, the tables not written."""
    out_root, output, seconds = grid
    assert "12 runs, 0 finished already, 12 to run, 2 at a time" in output
    assert "done 12/12" in output and "all 12 runs done" in output
    table = (out_root / "toy-smoke" / "table1.md").read_text()
    for name in ("Finetuning", "EWC", "Replay", "FTML", "VRMCL", "Trust Region"):
        assert f"| {name} |" in table and table.split(f"| {name} |")[1].split("\n")[0].endswith("| 2 |")
    assert (out_root / "toy-smoke" / "sw" / "table1.md").exists()
    assert (out_root / "toy-smoke" / "figure2_toy.png").exists()
    log = (out_root / "toy-smoke-tr-s1" / "sweep.log").read_text()
    assert log.startswith("=== ") and "--method tr --seed 1" in log and "--threads 1" in log
    assert "--seeds 1 --workers 1" in log
    print(f"whole toy grid: {seconds:.1f} s")
    again = run_sweep([*GRID, "--methods", "all"], out_root)  # finished runs are skipped, the tables rewritten
    assert "12 finished already, 0 to run" in again.communicate(timeout=120)[0] and again.returncode == 0


def test_killed_sweep_rerun_matches_uninterrupted(grid, tmp_path):
    """kill -9 of a run (reported, the others go on), then kill -9 of the whole sweep with runs in flight; the
    same command run again finishes the grid with the uninterrupted sweep's summaries.
    Catches: a finished run redone or a stopped one not resumed, a resume that changes the numbers, a run started
    twice on one folder, a failed run that stops the sweep."""
    methods = ["replay", "tr"]
    args = [*GRID, "--methods", *methods]
    proc = run_sweep(args, tmp_path, start_new_session=True)
    lines = []  # the sweep's output as it comes: the sweep is killed only after it has reported the dead run
    reader = threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True)
    reader.start()
    folders = [tmp_path / f"toy-smoke-{m}-s{s}" / f"{m}-s{s}" for m in methods for s in (0, 1)]
    killed_run = killed_sweep = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and killed_sweep is None:
        if killed_run is None:
            for folder in folders:
                if (folder / "config.json").exists() and (folder / ".lock").exists():
                    pid = (folder / ".lock").read_text().strip()
                    if pid:
                        os.kill(int(pid), signal.SIGKILL)  # one run dies; the sweep reports it and goes on
                        killed_run = folder
                        break
        elif any((f / "summary.json").exists() for f in folders) and any("FAILED" in line for line in lines):
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every run it started, at once
            killed_sweep = time.time()
        time.sleep(0.01)
    proc.wait(timeout=60)
    reader.join(timeout=60)
    output = "".join(lines)
    assert killed_run is not None and killed_sweep is not None, f"the sweep ended before it was killed:\n{output}"
    assert f"FAILED {killed_run.name}: exit code -9" in output, output
    unfinished = [f for f in folders if not (f / "sw" / "summary.json").exists()]
    assert len(unfinished) >= 2, "nothing was left for the rerun"
    rerun = run_sweep(args, tmp_path)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    assert f"{4 - len(unfinished)} finished already, {len(unfinished)} to run" in output
    assert summaries(tmp_path, methods) == summaries(grid[0], methods)


def test_failed_run_exits_1_with_its_log(tmp_path):
    """Catches: a failed run counted as done, its exit code or log not shown, the tables written anyway."""
    proc = run_sweep(["toy", "--preset", "smoke", "--methods", "tr", "--seeds", "0", "--", "--lr", "-1"], tmp_path)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, output
    log = tmp_path / "toy-smoke-tr-s0" / "sweep.log"
    assert f"FAILED tr-s0: exit code 2; log {log}: error: " in output
    assert not (tmp_path / "toy-smoke").exists()


@pytest.mark.parametrize("argv, message", [
    (["mnist"], "unknown experiment 'mnist'"),
    (["toy", "--methods", "tr", "sgd"], "unknown method ['sgd']"),
    (["toy", "--methods", "tr", "tr"], "names a method twice"),
    (["toy", "--seeds", "-1"], "--seeds must be in"),
    (["toy", "--seeds", "0", "0"], "names a seed twice"),
    (["toy", "--seeds", "x"], "invalid int value"),
    (["toy", "--jobs", "0"], "--jobs must be >= 1"),
    (["toy", "--preset", "medium"], "toy has no preset 'medium'"),
    (["toy", "--", "--seed", "3"], "--seed is set by the sweep"),
    (["cw10", "--time-min", "0"], "--time-min must be >= 1"),
])
def test_bad_input_one_line_exit_2(argv, message, tmp_path, capsys):
    """Catches: a traceback or usage block instead of one line, anything written before the check."""
    with pytest.raises(SystemExit) as e:
        sweep.main([*argv, "--out-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_slurm_job_parameters(tmp_path, monkeypatch):
    """What submitit is given and the #SBATCH lines it writes from it (CI has no Slurm: a stand-in srun on PATH).
    Catches: a flag that does not reach the job script, a job that is not requeued with the same command."""
    import submitit
    args = sweep.parse_args(["cw10", "--preset", "paper", "--methods", "tr", "--partition", "gpu",
                             "--gpus-per-run", "1", "--cpus-per-run", "8", "--mem-gb", "64", "--time-min", "1440",
                             "--out-root", str(tmp_path)])
    params = sweep.slurm_parameters(args, "cw10-tr-s0")
    assert params == {"name": "cw10-tr-s0", "timeout_min": 1440, "cpus_per_task": 8, "nodes": 1, "tasks_per_node": 1,
                      "gpus_per_node": 1, "mem_gb": 64, "slurm_partition": "gpu"}
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "slurm"), cluster="slurm")
    executor.update_parameters(**params)
    text = executor._executor._make_submission_file_text("CMD", "0")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=64GB", "--time=1440",
                 "--job-name=cw10-tr-s0", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in text, text
    args.executor = "slurm"  # parsed as local: CI has no sbatch
    run = sweep.build_runs(args)[0]
    assert run.cmd[run.cmd.index("--threads") + 1] == "8" and dict(run.env)["OMP_NUM_THREADS"] == "8"
    # preempted or timed out: checkpoint() stops the run's process and resubmits the same command
    job = sweep.RunCommand([sys.executable, "-c", "import time; time.sleep(60)"], run.env, str(tmp_path / "x.log"),
                           str(tmp_path))
    job._proc = sweep.start_process(job.cmd, job.env, job.log, job.cwd)
    resubmitted = job.checkpoint()
    assert job._proc.poll() == -signal.SIGTERM
    again = pickle.loads(pickle.dumps(resubmitted.function))
    assert again.cmd == job.cmd and not hasattr(again, "_proc")
