"""Run a grid of (method, seed) runs of one experiment, a few at a time on this machine or as jobs on a Slurm
cluster, then write its tables and figures; rerun the same command to resume.

    python sweep.py toy --preset smoke --methods all --seeds 0 1                   # seconds
    python sweep.py cw10 --preset medium --methods all --seeds 0 1 2 --jobs 2      # two runs at a time
    python sweep.py cw10 --preset paper --methods all --seeds 0 1 2 --executor slurm --partition gpu \\
        --gpus-per-run 1 --cpus-per-run 8 --mem-gb 64 --time-min 1440               # one Slurm job per run

Each run is one process, `python train_<experiment>.py --preset P --method M --seed S --out OUT --threads T
--no-progress [flags after --]` (train_toy.py also gets --seeds 1 --workers 1), with T = 1 torch thread here
(OMP/MKL too) or --cpus-per-run on Slurm. Files, under --out-root (default runs/):
    <exp>-<preset>-<method>-s<seed>/  OUT, the run folder (train_toy.py: the folder holding it, <method>-s<seed>/);
        sweep.log                    the run's stdout and stderr, every attempt appended after a "===" line
    <exp>-<preset>/                  `metrics.py aggregate` of the runs: table1.md, table2.md, Figure 2 (toy: sw/)
    <exp>-<preset>/slurm/            --executor slurm: submitit's job files, <method>-s<seed>.job (the job id)
A run whose summary.json is complete is skipped; any other is started with the same command, and the scripts resume
from their own checkpoint (experiment.RunFolder), so a sweep stopped any way (Ctrl-C, kill -9 of the sweep or of a
run) and run again ends with the summaries an uninterrupted sweep writes. A run still held by another process (its
folder's lock) is waited for, not started twice. The runs die with the sweep (SIGTERM on Linux); Ctrl-C or SIGTERM
stops them and exits 130 / 143. A failed run (non-zero exit) is printed with its exit code, its log's last line
and the log's path; the others go on, and the sweep exits 1 without the tables. Bad input: one line, exit 2.
Progress, at every start and end and every --status-every seconds: runs done / running / left, each running run's
task and step (its metrics.jsonl), and the time left, estimated from the runs' measured progress rates.

--executor slurm submits the same commands through submitit, one job per run. On preemption or timeout Slurm's
warning signal reaches submitit, which stops the run with SIGTERM (it checkpoints) and requeues the job; a job
requeued by Slurm itself reruns the command too: either way the run resumes. Stopped, the sweep leaves the jobs
running and, rerun, follows them (the .job files). A job Slurm refuses: one line, exit 74. cw10's runs share a
demonstration cache: the first run starts alone and the others once it has begun training.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import fcntl
import getpass
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import submitit

import runfiles
from metrics import METHOD_ORDER

ROOT = os.path.dirname(os.path.abspath(__file__))
# experiment: (script, files in the run folder that say it finished, whether its runs share a data cache)
EXPERIMENTS = {"cw10": ("train_cw10.py", ("summary.json",), True),
               "imagenet": ("train_imagenet.py", ("summary.json",), False),
               "toy": ("train_toy.py", ("summary.json", os.path.join("sw", "summary.json")), False)}
OWNED = ("--preset", "--method", "--seed", "--out", "--seeds", "--workers")  # set by the sweep, not after --
RETRY = "retry"  # a handle's poll(): the run's folder was busy, try it again


@dataclasses.dataclass(frozen=True)
class Run:
    method: str
    seed: int
    out: str  # the script's --out
    folder: str  # the run folder (summary.json, metrics.jsonl, .lock)
    cmd: tuple
    env: tuple  # extra environment variables, (name, value) pairs

    name = property(lambda self: f"{self.method}-s{self.seed}")
    log = property(lambda self: os.path.join(self.out, "sweep.log"))  # the run's stdout and stderr


def presets(script: str) -> list[str]:
    """The script's preset names: the keys of its PRESETS dict, read from its source (no torch import)."""
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PRESETS" for t in node.targets):
                return [k.value for k in node.value.keys]
    return ["paper"]


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = runfiles.Parser(description=__doc__.split("\n\n")[0], epilog="flags after -- go to every run's script")
    p.add_argument("experiment", help="cw10 | imagenet | toy (train_<experiment>.py)")
    p.add_argument("--preset", default="paper", help="the script's --preset (default: paper)")
    p.add_argument("--methods", nargs="+", default=["all"], help=f"all, or some of {' '.join(METHOD_ORDER)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default: 0)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="runs at once (default: one per core); --executor slurm: jobs queued at once (default: all)")
    p.add_argument("--out-root", default="runs", help="folder of the run folders and tables (default: runs)")
    p.add_argument("--status-every", type=float, default=30.0, help="seconds between progress lines (default: 30)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local", help="local processes | Slurm jobs")
    s = p.add_argument_group("slurm (--executor slurm)")
    s.add_argument("--partition", default="", help="Slurm partition (default: the cluster's)")
    s.add_argument("--gpus-per-run", type=int, default=0, help="GPUs per job (default: 0)")
    s.add_argument("--cpus-per-run", type=int, default=1, help="CPU cores per job, also its torch threads (default: 1)")
    s.add_argument("--mem-gb", type=int, default=0, help="memory per job in GB (default: the cluster's)")
    s.add_argument("--time-min", type=int, default=60, help="time limit per job in minutes; a job that reaches it "
                                                           "is requeued and resumes (default: 60)")
    s.add_argument("--slurm-folder", default="", help="submitit's job files (default: OUT_ROOT/<exp>-<preset>/slurm)")
    args = p.parse_args(argv)
    jobs_given = any(a == "--jobs" or a.startswith("--jobs=") for a in argv)
    try:
        validate(args, extra)
    except ValueError as e:
        p.error(str(e))
    args.extra = extra
    if args.executor == "slurm" and not jobs_given:
        args.jobs = 10 ** 6
    args.methods = list(METHOD_ORDER) if args.methods == ["all"] else args.methods
    args.slurm_folder = args.slurm_folder or os.path.join(aggregate_dir(args), "slurm")
    return args


def validate(args, extra) -> None:
    """ValueError naming the first bad input (parse_args turns it into one line and exit 2)."""
    require = runfiles.require
    require(args.experiment in EXPERIMENTS, f"unknown experiment {args.experiment!r} (choose from "
                                            f"{', '.join(EXPERIMENTS)})")
    choices = presets(EXPERIMENTS[args.experiment][0])
    require(args.preset in choices, f"{args.experiment} has no preset {args.preset!r} (choose from "
                                    f"{', '.join(choices)})")
    if args.methods != ["all"]:
        bad = [m for m in args.methods if m not in METHOD_ORDER]
        require(not bad, f"unknown method {bad[:1]} (all, or some of {', '.join(METHOD_ORDER)})")
        require(len(set(args.methods)) == len(args.methods), "--methods names a method twice")
    require(all(0 <= s < 2 ** 32 for s in args.seeds), f"--seeds must be in 0..2^32-1, got {args.seeds}")
    require(len(set(args.seeds)) == len(args.seeds), "--seeds names a seed twice")
    require(args.jobs >= 1, f"--jobs must be >= 1, got {args.jobs}")
    require(args.status_every > 0, f"--status-every must be > 0, got {args.status_every}")
    for name, low in (("gpus_per_run", 0), ("mem_gb", 0), ("cpus_per_run", 1), ("time_min", 1)):
        require(getattr(args, name) >= low, f"--{name.replace('_', '-')} must be >= {low}")
    owned = [a.split("=")[0] for a in extra if a.split("=")[0] in OWNED]
    require(not owned, f"{' '.join(owned)} is set by the sweep, not after --")
    runfiles.check_writable(args.out_root, "--out-root")
    if args.executor == "slurm":
        require(shutil.which("sbatch") is not None, "--executor slurm needs Slurm's sbatch on PATH")


def aggregate_dir(args) -> str:
    return os.path.join(args.out_root, f"{args.experiment}-{args.preset}")


def build_runs(args) -> list[Run]:
    """Every (method, seed) of the grid, methods in the given order, with its command."""
    script = EXPERIMENTS[args.experiment][0]
    threads = args.cpus_per_run if args.executor == "slurm" else 1
    runs = []
    for method in args.methods:
        for seed in args.seeds:
            out = os.path.join(args.out_root, f"{args.experiment}-{args.preset}-{method}-s{seed}")
            folder = os.path.join(out, f"{method}-s{seed}") if args.experiment == "toy" else out
            toy = ["--seeds", "1", "--workers", "1"] if args.experiment == "toy" else []
            cmd = [sys.executable, os.path.join(ROOT, script), "--preset", args.preset, "--method", method,
                   "--seed", str(seed), "--out", out, "--threads", str(threads), "--no-progress", *toy, *args.extra]
            env = (("OMP_NUM_THREADS", str(threads)), ("MKL_NUM_THREADS", str(threads)))
            runs.append(Run(method, seed, out, folder, tuple(cmd), env))
    return runs

# ----------------------------------------------------------------------------------------------------------------
# a run's state, read from its folder


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def finished(run: Run, experiment: str) -> bool:
    """Every summary file of the run parses and covers all its tasks."""
    for name in EXPERIMENTS[experiment][1]:
        s = read_json(os.path.join(run.folder, name))
        if not isinstance(s, dict) or s.get("n_tasks_trained") != len(s.get("task_names") or [None]):
            return False
    return True


def lock_held(folder: str) -> bool:
    """Whether another process holds the run folder's lock (experiment.RunFolder's .lock, flock)."""
    try:
        with open(os.path.join(folder, ".lock")) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when f closes
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


def last_record(path: str):
    """The last "train" record of a metrics.jsonl (read from its end), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").split("\n")[1:-1]
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            if (record := json.loads(line)).get("kind") == "train":
                return record
    return None


def where(run: Run):
    """(task, step, fraction of the run's training steps done), or None before the run has begun."""
    cfg = read_json(os.path.join(run.folder, "config.json"))
    if not isinstance(cfg, dict):
        return None
    record = last_record(os.path.join(run.folder, "metrics.jsonl")) or {"task": 0, "step": 0, "global_step": 0}
    n = cfg.get("num_tasks") or len(str(cfg.get("tasks", "")).split(","))
    per = cfg.get("steps_per_task") or 0
    if per:
        total = (cfg.get("first_task_steps") or per) + (n - 1) * per
        fraction = min(1.0, record["global_step"] / total)
    else:  # epochs per task: the step count is not in the config
        fraction = record["task"] / n
    return record["task"] + 1, record["step"], fraction

# ----------------------------------------------------------------------------------------------------------------
# executors: start(run) -> a handle whose poll() is None (running), an exit code, a string (why it failed) or RETRY


def child_setup() -> None:
    """In the run's process before exec: Slurm's warning signal (USR2) is for submitit only, and the run gets
    SIGTERM when its parent (the sweep, the submitit job) dies."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    runfiles.term_with_parent()


def start_process(cmd, env, log: str, cwd: str) -> subprocess.Popen:
    """The run's process, its output appended to `log` after a line with the time and the command."""
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env={**os.environ, **dict(env)}, preexec_fn=child_setup)


class Local:
    def __init__(self, args):
        self.cwd = os.getcwd()

    def start(self, run: Run):
        """The run's process; or, while another process holds the run's folder, the run itself (wait for it)."""
        return run if lock_held(run.folder) else start_process(run.cmd, run.env, run.log, self.cwd)

    def poll(self, handle):
        if isinstance(handle, Run):
            return None if lock_held(handle.folder) else RETRY
        return handle.poll()

    def stop(self, handles: dict, signum: int) -> None:
        """Pass the signal to the runs still going (after a grace: a terminal's Ctrl-C reaches them itself), wait
        for them to save and exit, kill those that do not within a minute."""
        procs = [h for h in handles.values() if isinstance(h, subprocess.Popen)]
        time.sleep(3 if any(p.poll() is None for p in procs) else 0)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
        deadline = time.time() + 60
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class RunCommand(submitit.helpers.Checkpointable):
    """A Slurm job: the run's command in a child process. Preempted or near its time limit, submitit calls
    checkpoint(): the child is stopped with SIGTERM (the run keeps its last checkpoint) and the job is requeued with
    this same callable, so the command runs again and resumes."""

    def __init__(self, cmd, env, log: str, cwd: str):
        self.cmd, self.env, self.log, self.cwd = tuple(cmd), tuple(env), log, cwd

    def __call__(self) -> int:
        self._proc = start_process(self.cmd, self.env, self.log, self.cwd)
        while (code := self._proc.poll()) is None:
            time.sleep(1)
        if code in (-signal.SIGTERM, 128 + signal.SIGTERM):  # Slurm is stopping the job (requeue, cancel):
            time.sleep(300)  # let it finish, rather than report a result the requeued job would contradict
        return code

    def checkpoint(self, *args, **kwargs):
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            deadline = time.time() + 60
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.5)
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}


def slurm_parameters(args, name: str) -> dict:
    """The keyword arguments of submitit's AutoExecutor.update_parameters for one run's job."""
    optional = {"gpus_per_node": args.gpus_per_run, "mem_gb": args.mem_gb, "slurm_partition": args.partition}
    return {"name": name, "timeout_min": args.time_min, "cpus_per_task": args.cpus_per_run, "nodes": 1,
            "tasks_per_node": 1, **{k: v for k, v in optional.items() if v}}  # 0 / "": the cluster's default


class Slurm:
    def __init__(self, args):
        self.args, self.cwd, self.queue, self.missing = args, os.getcwd(), {}, set()

    def job_file(self, run: Run) -> str:
        return os.path.join(self.args.slurm_folder, f"{run.name}.job")

    def refresh(self) -> None:
        """The state of this user's queued and running jobs, one squeue call per poll of the sweep."""
        out = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i %T"], capture_output=True,
                             text=True).stdout
        self.queue = dict(line.split(maxsplit=1) for line in out.splitlines() if " " in line)

    def start(self, run: Run):
        old = read_json(self.job_file(run))
        self.refresh()
        if old and str(old) in self.queue:  # submitted by an earlier sweep and still queued or running
            print(f"  {run.name}: following job {old} ({self.queue[str(old)]})")
            return submitit.SlurmJob(folder=self.args.slurm_folder, job_id=str(old))
        executor = submitit.AutoExecutor(folder=self.args.slurm_folder, cluster="slurm")
        executor.update_parameters(**slurm_parameters(self.args, f"{self.args.experiment}-{run.name}"))
        try:
            job = executor.submit(RunCommand(run.cmd, run.env, run.log, self.cwd))
        except Exception as e:  # no sbatch, no controller, a partition or resource Slurm refuses: exit 74
            print(f"error: Slurm did not take {run.name}'s job: {(str(e).strip().splitlines() or [repr(e)])[-1]}",
                  file=sys.stderr)
            raise SystemExit(74) from None
        runfiles.atomic_write_json(self.job_file(run), job.job_id)
        print(f"  {run.name}: submitted job {job.job_id}")
        return job

    def poll(self, job):
        if job.paths.result_pickle.exists():
            try:
                return job.result()
            except Exception as e:  # the job's own error, as submitit reports it
                return f"job {job.job_id} failed: {(str(e).strip().splitlines() or [repr(e)])[-1]}"
        if job.job_id in self.queue:
            self.missing.discard(job.job_id)
            return None
        if job.job_id not in self.missing:  # gone from the queue: a result may still be on its way
            self.missing.add(job.job_id)
            return None
        return f"job {job.job_id} left the queue without a result (cancelled?)"

    def stop(self, handles: dict, signum: int) -> None:
        print("the jobs go on in Slurm; rerun the same command to follow them, scancel to stop them")

# ----------------------------------------------------------------------------------------------------------------
# the sweep


_STOPPED_BY = [signal.SIGINT]


def _stop(signum, frame):
    _STOPPED_BY[0] = signum
    raise KeyboardInterrupt


def clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def status(done: int, failed: int, active: dict, todo: list, rates: dict, seen: dict, slots: int, total: int) -> str:
    """One progress line: counts, each running run's task and step, the time left at the measured rates."""
    parts, remaining = [], []
    for run in active:
        w = where(run)
        if w is None:
            parts.append(f"{run.name} starting")
            continue
        task, step, fraction = w
        parts.append(f"{run.name} task {task} step {step}")
        t0, f0 = seen.setdefault(run, (time.time(), fraction))
        if fraction > f0 and time.time() > t0:
            rates[run] = (fraction - f0) / (time.time() - t0)  # run fractions per second
            remaining.append((1 - fraction) / rates[run])
    eta, mean = "?", sum(1 / r for r in rates.values()) / max(1, len(rates))  # a run's time at the mean rate
    if rates:  # runs without a rate of their own yet take the mean
        work = sum(remaining) + mean * (len(todo) + len(active) - len(remaining))
        eta = clock(work / max(1, min(slots, len(active) + len(todo))))
    line = f"[{time.strftime('%H:%M:%S')}] done {done}/{total}" + (f" ({failed} failed)" if failed else "")
    return line + f", running {len(active)}, left {len(todo)}; time left {eta}" + \
        ("".join(f"\n    {p}" for p in parts))


def last_line(path: str) -> str:
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        return ([line.strip() for line in f if line.strip()] or [""])[-1]
    return ""


def aggregate(args, runs: list[Run]) -> int:
    """`metrics.py aggregate` of the runs (the toy: also of their sw/ summaries); prints Table 1."""
    out = aggregate_dir(args)
    calls = [([r.folder for r in runs], out)]
    if args.experiment == "toy":
        calls.append(([os.path.join(r.folder, "sw") for r in runs], os.path.join(out, "sw")))
    for dirs, dest in calls:
        code = subprocess.run([sys.executable, os.path.join(ROOT, "metrics.py"), "aggregate", *dirs, "--out", dest]
                              ).returncode
        if code:
            print(f"error: metrics.py aggregate exited with {code}", file=sys.stderr)
            return 1
    with open(os.path.join(out, "table1.md"), encoding="utf-8") as f:
        print(f.read())
    return 0


def sweep(args) -> int:
    runs = build_runs(args)
    todo = [r for r in runs if not finished(r, args.experiment)]
    done, failed, active, rates, seen = len(runs) - len(todo), [], {}, {}, {}
    executor = (Slurm if args.executor == "slurm" else Local)(args)
    slots = min(args.jobs, len(todo)) or 1
    print(f"{args.experiment} {args.preset}: {len(runs)} runs, {done} finished already, {len(todo)} to run, "
          f"{slots} at a time ({args.executor})", flush=True)
    gate = todo[0] if EXPERIMENTS[args.experiment][2] and todo else None  # runs share a cache: one starts first
    began, last_status = time.time(), 0.0
    try:
        while todo or active:
            if isinstance(executor, Slurm) and active:
                executor.refresh()
            changed = False
            for run, handle in list(active.items()):
                code = executor.poll(handle)
                if code is None:
                    continue
                del active[run]
                changed = True
                if code == RETRY:
                    todo.insert(0, run)
                elif code == 0 and finished(run, args.experiment):
                    done += 1
                    print(f"  finished {run.name} ({clock(time.time() - began)} into the sweep)", flush=True)
                else:
                    failed.append(run)
                    why = f"exit code {code}" if isinstance(code, int) else code
                    print(f"  FAILED {run.name}: {why}; log {run.log}: {last_line(run.log)}", flush=True)
            while todo and len(active) < args.jobs:
                if gate is not None and gate in active and where(gate) is None:
                    break  # the first run is still preparing the shared data
                run = todo.pop(0)
                if finished(run, args.experiment):
                    done += 1
                    continue
                active[run] = executor.start(run)
                changed = True
                if active[run] is run:
                    print(f"  {run.name}: its folder is in use by another process; waiting for it", flush=True)
            if changed or time.time() - last_status >= args.status_every:
                print(status(done, len(failed), active, todo, rates, seen, slots, len(runs)), flush=True)
                last_status = time.time()
            if todo or active:
                time.sleep(0.2 if args.executor == "local" else 5.0)
    except KeyboardInterrupt:
        signum = _STOPPED_BY[0]
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        executor.stop(active, signum)
        print(f"\nstopped ({signal.Signals(signum).name}) with {done}/{len(runs)} runs done; rerun the same "
              f"command to resume", file=sys.stderr)
        return 128 + signum
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed ({', '.join(r.name for r in failed)}); fix the cause and "
              f"rerun the same command: the others are kept", file=sys.stderr)
        return 1
    print(f"all {len(runs)} runs done in {clock(time.time() - began)}", flush=True)
    return aggregate(args, runs)


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    return sweep(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
