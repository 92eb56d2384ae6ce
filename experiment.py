"""The scaffold the experiment scripts share: flags from a Config dataclass, the device, seeds, the run folder
(lock, configuration check, resume), the non-finite guard and the one-line endings. No math lives here.

Why a module of its own: train_cw10.py, train_imagenet.py and train_toy.py must do these jobs the same way.
Written in each script, the copies drifted apart (different boolean flags, seeds, devices, resume rules).

    flags      one --flag per Config field; its help is the field's trailing comment in the dataclass, shown
               with its default once; booleans are --x / --no-x; values: defaults <- --preset <- explicit flags.
    device     auto (cuda if available) | cpu | cuda[:i]; TF32 matmuls on CUDA. compile_denoiser: --compile.
    seeds      generator(seed, *keys) seeds a torch.Generator from numpy's SeedSequence([seed, *keys]). Every
               random draw of a run comes from a generator keyed by (task, step, stream), so a run resumed
               from a checkpoint draws exactly what the uninterrupted run drew.
    run folder RunFolder(out, cfg): checks the path before anything is written, takes an exclusive lock (a
               second run on the folder stops, naming the process that holds it), refuses a folder that holds
               a run with another configuration (naming the fields), and loads the last checkpoint: rerunning
               the same command resumes. config.json is written by `begin()`, once the data are ready; a run
               that fails before that leaves the folder as it found it.
    Task 1     --task1-cache FILE: finetune, ewc, replay and tr train Task 1 alike (no Fisher or replay pool yet),
               so the first run writes FILE at Task 1's end and the others start from it, with the same numbers
               and Task 1's records; FILE's configuration must equal the run's in every field Task 1 uses.
    endings    run(main) = runfiles.run: one line and an exit code for every failure (2 bad input, 3 divergence,
               74 a fault, 130 Ctrl-C, 143 SIGTERM, 1 a bug); a stop finishes the step in flight and checkpoints
               it (step_end). A summary is written by a finished run only.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import time
import typing

import numpy as np
import torch

import learners
import replay
import runfiles
from runfiles import check_writable, require

# ----------------------------------------------------------------------------------------------------------------
# flags from the Config dataclass


def field_help(cls) -> dict[str, str]:
    """{field: its trailing comment} read from the dataclass source (a comment line below a field continues it)."""
    helps, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        field = re.match(r"\s+(\w+)\s*:[^=#]+=[^#]*#\s*(.*)$", line)
        if field:
            last = field[1]
            helps[last] = field[2].strip()
        elif last and re.match(r"\s+#\s", line):
            helps[last] += " " + line.strip()[1:].strip()
        else:
            last = None
    return helps


def build_parser(cls, presets: dict, description: str, choices: dict | None = None, extra=()):
    """--preset, --out, the script's `extra` flags [(flag, argparse kwargs)], and one flag per field of `cls`
    (default None: "not given", so that presets apply)."""
    overrides = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                          for name, values in presets.items() if values)
    p = runfiles.Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=f"presets override the defaults: {overrides}")
    p.add_argument("--preset", choices=list(presets), default="paper", help="named overrides (default: paper)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<experiment>-<preset>-<method>-s<seed>); "
                                               "rerun the same command to resume")
    for flag, kwargs in extra:
        p.add_argument(flag, **kwargs)
    hints, helps, choices = typing.get_type_hints(cls), field_help(cls), choices or {}
    for f in dataclasses.fields(cls):
        flag, text = "--" + f.name.replace("_", "-"), f"{helps.get(f.name, '')} (default: {f.default})"
        if hints[f.name] is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, dest=f.name, type=hints[f.name], default=None, choices=choices.get(f.name),
                           metavar=f.name.upper() if f.name not in choices else None, help=text)
    return p


def parse_config(cls, presets: dict, argv, description: str, choices: dict | None = None, extra=()):
    """(cfg, args): defaults <- preset <- explicit flags."""
    args = build_parser(cls, presets, description, choices, extra).parse_args(argv)
    require(args.out is None or args.out.strip() != "", "--out must not be empty")
    values = dict(presets[args.preset])
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None})
    return cls(**values), args


def validate_common(cfg, positive=(), non_negative=(), below_one=()) -> None:
    """Checks every Config shares: seeds in range, every float finite, the named fields > 0, >= 0 or in [0, 1)."""
    require(0 <= cfg.seed < 2 ** 32, f"--seed must be in 0..2^32-1, got {cfg.seed}")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        require(not isinstance(value, float) or math.isfinite(value), f"--{f.name.replace('_', '-')} must be "
                                                                      f"finite, got {value}")
    for name in positive:
        require(getattr(cfg, name) > 0, f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    for name in non_negative:
        require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    for name in below_one:
        require(0 <= getattr(cfg, name) < 1, f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(cfg, name)}")
    runfiles.check_device(cfg.device)


# ----------------------------------------------------------------------------------------------------------------
# device and seeds


def setup_torch(device: str, threads: int = 0) -> torch.device:
    """The one device choice (the training scripts and bench.py): auto -> cuda if available, else cpu. threads > 0
    sets torch's CPU threads."""
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 storage, TF32 matmuls: on an H100 faster than bf16 autocast
        #   for the paper's 1D UNet (bench.py step --bf16)
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(device)


def generator(seed: int, *keys: int, device="cpu") -> torch.Generator:
    """The generator of draw `keys` (e.g. task, step, stream) of run `seed`; independent streams for any keys."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))

COMPILE_MODES = ("auto", "off", "default", "reduce-overhead")


def compile_denoiser(model, mode="auto"):
    """Compile `model`'s forward in place with torch.compile (nn.Module.compile); returns the mode used ("off":
    eager).

    auto: "reduce-overhead" (CUDA graphs, for a launch-bound step) on CUDA, "off" on the CPU, where "default" made
    the small model's step 7% faster after 4-7 s of compilation (results/cpu_speed): too little to give up the eager
    step's plain tracebacks. Whether CUDA graphs bring the paper's model to its GPU speed is not yet measured. In
    place, so parameters, state_dict keys and the learners' optimizers are unchanged, and every call model(x_t, t,
    cond) runs the compiled code: the training step of every method (forward and backward; FTML / VR-MCL through
    functional_call), the replay teacher, and each network call of DDIM sampling (rollouts, replay generation, FID
    samples). Not covered: torch.func transforms (the Fisher's jvp and vmap), which callers run under
    torch.compiler.set_stance("force_eager"), and replay.frozen_copy, whose copy is eager (callers compile it
    again). The eager step is the reference: tests/test_speed.py checks that both give the same parameters after a
    few steps of every method.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {COMPILE_MODES}")
    if mode == "auto":
        mode = "reduce-overhead" if next(model.parameters()).device.type == "cuda" else "off"
    if mode != "off":
        model.compile(mode=mode)
    return mode


def new_learner(cfg, model, sched):
    """learners.make_learner for cfg.method with the Config's fields, each named (a missing one is an error)."""
    return learners.make_learner(cfg.method, model, sched, lr=cfg.lr, beta=cfg.beta, lam=cfg.lam,
                                 inner_lr=cfg.inner_lr, vr_momentum=cfg.vr_momentum, second_order=cfg.second_order,
                                 grad_clip=cfg.grad_clip, bf16=cfg.bf16, ema=cfg.ema)

# ----------------------------------------------------------------------------------------------------------------
# the non-finite guard


def check_finite(where: str, values: dict) -> None:
    """Raise Diverged naming `where` and the first non-finite entry of {name: 0-d tensor or float} (one sync)."""
    if not values:
        return
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64).to("cpu") for v in values.values()])
    if not torch.isfinite(flat).all():
        name, value = next((k, v) for k, v in zip(values, flat.tolist()) if not math.isfinite(v))
        raise runfiles.Diverged(f"{where}: non-finite {name} ({value})")


def check_parameters(model: torch.nn.Module, where: str) -> None:
    """Raise Diverged if any parameter is NaN or inf (called before every checkpoint and evaluation)."""
    if not torch.stack([p.isfinite().all() for p in model.parameters()]).all():
        raise runfiles.Diverged(f"{where}: non-finite parameters")

# ----------------------------------------------------------------------------------------------------------------
# the run folder


def config_diff(old: dict, cfg, free=()) -> list[str]:
    """"field old -> new" for every field of cfg, except those in `free`, that differs from the stored config `old`;
    a field that `old` lacks (written before the field existed) counts as holding its default."""
    default = {f.name: f.default for f in dataclasses.fields(cfg)}
    return [f"{k} {old.get(k, default[k])!r} -> {v!r}" for k, v in dataclasses.asdict(cfg).items()
            if k not in free and old.get(k, default[k]) != v]


def default_out(experiment: str, preset: str, cfg) -> str:
    """runs/<experiment>-<preset>-<method>-s<seed>: the same command always names the same folder (resume)."""
    return os.path.join("runs", f"{experiment}-{preset}-{cfg.method}-s{cfg.seed}")


class RunFolder:
    """One run's folder: config.json, checkpoint.pt, metrics.jsonl, summary.json and pictures.

    with RunFolder(out, cfg, runtime_fields) as folder:   # checks, lock, config check, checkpoint (or None)
        ... prepare data ...
        folder.begin()                                   # writes config.json, opens metrics.jsonl
        ... train, folder.save(...), folder.logger.log(...) ...
    `runtime_fields` do not change the numbers a run produces (device, threads, progress, ...): they may differ
    when a run is resumed. `task` and `step` say where the run is, `saved` where its checkpoint is ((task, step) or
    None), for the endings' one line (runfiles.run). Every existing file is read and checked before any is changed.
    """

    def __init__(self, out: str, cfg, runtime_fields=()):
        self.out, self.cfg, self.runtime_fields = out, cfg, tuple(runtime_fields)
        self.task = self.step = 0
        self.saved = None
        self.checkpoint, self.logger, self._lock, self._created = None, None, None, []
        self._starts, self.starts, self.clock = [], [], None

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def __enter__(self) -> "RunFolder":
        try:
            self._open()
        except BaseException:
            self.__exit__()  # Python does not call __exit__ when __enter__ raises
            raise
        return self

    def _open(self) -> None:
        check_writable(self.out, "the run folder")
        missing = [self.out]  # the folders this run creates, innermost first (removed again if it never begins)
        while not os.path.exists(os.path.dirname(os.path.abspath(missing[-1]))):
            missing.append(os.path.dirname(os.path.abspath(missing[-1])))
        if not os.path.isdir(self.out):
            os.makedirs(self.out)
            self._created += missing[::-1]
        if not os.path.exists(self.path(".lock")):
            self._created.append(self.path(".lock"))
        self._lock = runfiles.lock_folder(self.out)
        self._check_config()
        if os.path.exists(self.path("checkpoint.pt")):
            try:
                self.checkpoint = torch.load(self.path("checkpoint.pt"), map_location="cpu", weights_only=False)
            except Exception as e:  # truncated or foreign file: pickle, zip and torch errors of every kind
                raise ValueError(f"{self.path('checkpoint.pt')} is unreadable ({type(e).__name__}); "
                                 f"use another --out") from None
            self.task, self.step = self.checkpoint["state"]["task"], self.checkpoint["state"]["step"]
            self.saved = (self.task, self.step)
        if os.path.exists(self.path("metrics.jsonl")):  # ValueError naming a corrupt line
            n = len(runfiles.read_jsonl(self.path("metrics.jsonl")))
            need = (self.checkpoint or {}).get("log_records", 0)
            require(n >= need, f"{self.path('metrics.jsonl')} has {n} records, fewer than the {need} its checkpoint "
                               f"was written after; delete the run folder to start over, or use another --out")

    def _check_config(self) -> None:
        path = self.path("config.json")
        if not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            raise ValueError(f"{path} is unreadable; use another --out") from None
        self._starts = old.get("provenance", []) if isinstance(old, dict) else []
        diff = config_diff(old, self.cfg, self.runtime_fields)
        require(not diff, f"{self.out} holds a run with another configuration ({'; '.join(diff)}); "
                          f"use another --out")

    def begin(self, start: dict) -> None:
        """The run starts: config.json (this command's; on resume it equals the stored one but for runtime fields,
        plus "provenance": the `runfiles.provenance` record of every start, this one last) and metrics.jsonl (cut
        back to the checkpoint's global step on resume)."""
        self.starts = self._starts + [start]
        runfiles.atomic_write_json(self.path("config.json"),
                                   {**dataclasses.asdict(self.cfg), "provenance": self.starts})
        self.logger = runfiles.JsonlLogger(self.path("metrics.jsonl"))
        if self.checkpoint is not None and "log_records" in self.checkpoint:
            self.logger.keep(self.checkpoint["log_records"])
        elif self.checkpoint is not None:  # written before checkpoints counted the records
            self.logger.truncate_after(self.checkpoint["state"]["global_step"])
        elif os.path.exists(self.logger.path):  # a run stopped before its first checkpoint starts over
            runfiles.atomic_write_text(self.logger.path, "")
        self._created = []

    @property
    def began(self) -> bool:
        return self.logger is not None

    def save(self, checkpoint: dict) -> None:
        """checkpoint.pt (`checkpoint`, with the count of metrics.jsonl's records; its state's wall time brought
        up to now)."""
        if self.clock is not None:
            self.clock.tick()
        runfiles.atomic_torch_save({**checkpoint, "log_records": self.logger.records}, self.path("checkpoint.pt"))
        self.saved = (checkpoint["state"]["task"], checkpoint["state"]["step"])

    def __exit__(self, *exc) -> None:
        """Release the lock; a run that never began leaves the folder as it found it."""
        for path in reversed(self._created):
            if os.path.isdir(path):
                if not os.listdir(path):
                    os.rmdir(path)
            elif os.path.exists(path):
                os.remove(path)
        if self._lock is not None and not self._lock.closed:
            self._lock.close()

# ----------------------------------------------------------------------------------------------------------------
# steps every continual loop takes the same way


def start(folder: RunFolder, cfg, model, sched, state: dict | None = None):
    """(learner, replay pool, teacher, loop state) of a run: built fresh, or restored from the folder's checkpoint.
    Begins the folder (config.json, metrics.jsonl). The loop state: task and step to do next, global_step, the rows
    of R, the evaluation curves {task: [(global_step, in_task_step, training_task, score)]}, the transitions (a
    script that keeps more, e.g. a second score, passes its own initial `state`)."""
    learner = new_learner(cfg, model, sched)
    pool, teacher = replay.ReplayPool(), None
    state = state or {"task": 0, "step": 0, "global_step": 0, "R": [], "curves": {}, "transitions": []}
    if folder.checkpoint is not None:
        state, teacher = restore(folder.checkpoint, model, learner, pool)
        print(f"resuming {folder.out} at task {state['task'] + 1}, step {state['step']}")
    device = next(model.parameters()).device
    folder.begin(runfiles.provenance(str(device), torch.cuda.get_device_name(device) if device.type == "cuda"
                                     else None, torch.get_num_threads()))
    folder.clock = runfiles.Clock(state)
    return learner, pool, teacher, state


def provenance(folder: RunFolder) -> dict:
    """summary.json's "provenance": every start of the run (config.json's records), when it ended, and its wall
    times (Clock). metrics.py aggregate reads the commits from it."""
    return {"starts": folder.starts, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: round(v, 3) for k, v in folder.clock.tick().items()}}


def train_step(learner, batch, replay_batch, generator, state: dict, folder: RunFolder, bar, log_every: int) -> None:
    """One learner step (Eq. 8 or the meta-update), the loop state advanced; every log_every steps the one host sync:
    check the step's 0-d tensors are finite, show the loss in the bar, write a "train" record (with Eq. 9's norms)."""
    runfiles.defer_stops()  # Ctrl-C / SIGTERM wait for step_end: the step is never half-applied
    log_now = (state["step"] + 1) % log_every == 0
    with folder.clock.timed("train_s"):
        logs = learner.step(batch, replay_batch, generator, log_terms=log_now)
    state["step"] += 1
    state["global_step"] += 1
    folder.step = state["step"]
    if log_now:
        check_finite(f"task {state['task'] + 1} step {state['step']}", logs)
        logs = {name: float(v) for name, v in logs.items()}
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        folder.logger.log({"kind": "train", "global_step": state["global_step"], "task": state["task"],
                           "step": state["step"], **logs})


def averaged(learner):
    """The block runs with the model holding the learner's weight average (`--ema`); a no-op without one."""
    return learner.applied() if isinstance(learner, learners.WeightAverage) else contextlib.nullcontext()


def end_task(learner) -> None:
    """A task's last step is done: with `--ema` the model keeps the averaged weights from here on (the boundary's
    evaluation, Fisher, anchor and teacher all see them)."""
    if isinstance(learner, learners.WeightAverage):
        learner.adopt()


def reset_optimizer(learner) -> None:
    """Clear the learner's Adam moments (first and second) and step count at a task boundary: the next task's first
    update is then lr-sized. Carried over, the moments of a task trained to convergence (small gradients, the lr
    decayed) meet the next task's larger gradients g without Adam's bias correction (its step count is in the
    thousands): with |g| >> sqrt(v_old) the update is (1 - 0.9^n) / sqrt(1 - 0.999^n) times the lr in every
    parameter at once at step n, 3.2x at n = 1, 6.5x at n = 10, still 3.2x at n = 100, where a fresh Adam's is 1x.
    results/cw10_medium_cpu/adam_carried: without the reset, finetune's CW10 network collapsed to a constant output.
    Continual World resets it on every task change (run_cl.py, --reset_optimizer_on_task_change, default True).
    VR-MCL's STORM momentum is a gradient estimate on the new task's batches and stays."""
    learner.opt.state.clear()  # Adam re-creates step, exp_avg, exp_avg_sq at zero on its next step


def transition(learner, cfg, state: dict) -> None:
    """The boundary's last step, after Fisher and replay pool: the next task begins at this global step (Table 2,
    Figure 2), with fresh Adam moments if cfg.reset_optimizer. Its default differs by experiment, each measured:
    CW10 resets (carried moments collapsed finetune's network); the image and toy experiments carry them, as their
    committed results were made, and neither collapses (results/toy/README.md, results/imagenet_small_cpu/README.md)."""
    state["transitions"].append(state["global_step"])
    if cfg.reset_optimizer:
        reset_optimizer(learner)


def checkpoint(cfg, state: dict, model, learner, pool, teacher) -> dict:
    """Everything a resumed run needs: config, loop state (task, step, R, curves, ...), weights, learner (optimizer,
    Fishers), replay pool and teacher (None before the first boundary or for methods without replay)."""
    return {"config": dataclasses.asdict(cfg), "state": state, "model": model.state_dict(),
            "learner": learner.state_dict(), "pool": pool.state_dict(),
            "teacher": None if teacher is None else teacher.state_dict()}


def restore(ck: dict, model, learner, pool):
    """Load a `checkpoint` into a freshly built model, learner and pool; returns (state, teacher or None)."""
    model.load_state_dict(ck["model"])
    learner.load_state_dict(ck["learner"])
    pool.load_state_dict(ck["pool"])
    teacher = None
    if ck["teacher"] is not None:
        teacher = replay.frozen_copy(model)
        teacher.load_state_dict(ck["teacher"])
        learner.replay_loss_fn.set_teacher(teacher)
    return ck["state"], teacher


def add_fisher(learner, F, log, task: int, global_step: int) -> None:
    """A task boundary's Fisher step after the estimate: check its scalars, hand it to the learner, log them."""
    check_finite(f"task {task + 1} Fisher", F.scalars())
    learner.add_fisher(F)
    log({"kind": "fisher", "global_step": global_step, "task": task, **F.scalars(), "diagnostics": F.diagnostics})

# ----------------------------------------------------------------------------------------------------------------
# Task 1 trained once, shared by the methods that train it alike


TASK1_METHODS = ("finetune", "ewc", "replay", "tr")  # Task 1 is plain Eq. (3) Adam steps for these: no Fisher and
#   no replay pool exist before the first boundary (FTML and VR-MCL take their own bilevel steps from the start)
TASK1_FREE_FIELDS = ("method", "lam", "fisher", "fisher_samples", "fisher_batch", "beta", "replay_per_task",
                     "replay_ratio", "replay_ddim_steps", "replay_rebuild", "task1_cache")  # only used after Task 1


def lr_at(cfg, step: int, task_steps: int) -> float:
    """The (outer) Adam lr at 0-based in-task step `step` of a task of task_steps updates (both training scripts):
    cfg.lr (constant, the paper's), or cosine: cfg.lr min(1, (step + 1) / lr_warmup) (1 + cos(pi step / task_steps))
    / 2, restarting at every task (a CPU deviation; each script's docstring says why its small preset uses it)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    warm = min(1.0, (step + 1) / max(cfg.lr_warmup, 1))
    return cfg.lr * warm * (1 + math.cos(math.pi * step / task_steps)) / 2


def set_lr(learner, cfg, step: int, task_steps: int) -> None:
    """Set the learner's Adam lr to lr_at(cfg, step, task_steps) before in-task step `step`; computed from the step
    alone, so a resumed run continues the schedule."""
    for group in learner.opt.param_groups:
        group["lr"] = lr_at(cfg, step, task_steps)


def check_task1_cache(cfg, runtime_fields=()) -> None:
    """ValueError (one line) unless cfg may use cfg.task1_cache: a method of TASK1_METHODS and, if the file exists,
    a snapshot written by a run whose configuration equals cfg in every field that Task 1 depends on."""
    if not cfg.task1_cache:
        return
    require(cfg.method in TASK1_METHODS, f"--task1-cache: {cfg.method} trains Task 1 with its own update; the "
                                         f"cache is for {', '.join(TASK1_METHODS)}")
    if not os.path.exists(cfg.task1_cache):
        return check_writable(os.path.dirname(os.path.abspath(cfg.task1_cache)), "--task1-cache's folder")
    try:
        old = torch.load(cfg.task1_cache, map_location="cpu", weights_only=False)["config"]
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"--task1-cache {cfg.task1_cache} is unreadable ({type(e).__name__})") from None
    diff = config_diff(old, cfg, set(TASK1_FREE_FIELDS) | set(runtime_fields))
    require(not diff, f"--task1-cache {cfg.task1_cache} holds a Task 1 trained with another configuration "
                      f"({'; '.join(diff)})")


def save_task1(path: str, cfg, state: dict, model, learner, metrics_path: str) -> None:
    """Task 1's end, before the first boundary: weights, optimizer, loop state and Task 1's metrics records."""
    ck = checkpoint(cfg, state, model, learner, replay.ReplayPool(), None)
    ck["records"] = runfiles.read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    runfiles.atomic_torch_save(ck, path)


def load_task1(path: str, model, learner, pool, log) -> dict:
    """Restore a `save_task1` snapshot into a fresh run (its records are logged again); returns the loop state.
    The run then continues exactly as if it had trained Task 1 itself (tests/test_imagenet.py)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    state, _ = restore(ck, model, learner, pool)
    for record in ck["records"]:
        log(record)
    return state

# ----------------------------------------------------------------------------------------------------------------
# endings: runfiles.run (one line and an exit code for every failure); the training loops' safe point

run, track = runfiles.run, runfiles.track  # the scripts' entry point and the folder its lines speak of


def step_end(due: bool, save) -> None:
    """The end of an in-task step, the training loops' safe point: save() if a checkpoint is `due` or a stop
    (Ctrl-C, SIGTERM) arrived during the step (its evaluation included), then stop (runfiles.Stopped); stops
    that arrive from here to the next step's start end the run at once, from the last checkpoint."""
    if due or runfiles.stop_pending():
        save()
    runfiles.stop_point()
