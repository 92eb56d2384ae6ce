"""Every benchmark of the project: how long a training step, a Fisher estimate, a forward and backward pass,
a rollout and a sample take. Nothing here is part of the paper's method; results/*/README.md quote its output.

    python bench.py step [--device cuda] [--model unet1d_paper] [--batch 128]   # one training step of every method
    python bench.py fisher [--model unet1d_small --samples 256 --batch 64]     # batched rank-1 Fisher vs the loop
    python bench.py unet [--counts-only]                                       # parameter counts, forward+backward
    python train_cw10.py --bench [flags]        # rollouts and demo collection (cw10_rollouts), the run's Config
    python train_imagenet.py --bench [flags]    # DDIM sampling and FID features (image_sampling), the run's Config

step: the step of each method (trust_region.TrustRegionLearner for finetune / ewc / replay / tr, meta_baselines'
FTML and VR-MCL, each with and without --second-order) against finetune, in interleaved rounds; --compile MODE adds
each method compiled (experiment.compile_denoiser), --bf16 with its forward passes under bf16 autocast, --two-calls
replay and tr with two network calls instead of one, --sync each method reading its logs after every step,
--profile where the time of one step goes (device kernels or the host). `step_times` is also train_cw10.py's notice
of how long the paper's model takes on a CPU.
fisher: fisher.Rank1Fisher.estimate (batched: one backward and one JVP per batch) against estimate_loop (one backward
per sample, twice, as the authors' code) on the same batches with pre-drawn noise, and checks that they agree.
unet: parameter counts of the paper's denoisers (Table 6) and the median forward+backward time of the selected ones.
The rollout and sampling benches take the training script's configuration (model, rollout batch, env workers,
DDIM steps, ...), so their command line is the script's `--bench`.
"""
import argparse
import copy
import dataclasses
import os
import re
import time

import numpy as np
import torch
from tqdm import tqdm

import cw10_data
import diffusion
import experiment
import fid
import fisher
import learners
import replay
import runfiles
import unet

# --------------------------------------------------------------------------------------------------
# step: the training step of each method against finetune (Table 6 / Table 7 comparison)


STEP_MODELS = {  # name -> (factory, x0 shape, cond maker (B, generator) -> cond)
    "unet1d_tiny": (lambda: unet.unet1d_tiny(), (8, 4), lambda b, g: torch.randn(b, 6, 39, generator=g)),
    "unet1d_small": (lambda: unet.unet1d_small(), (8, 4), lambda b, g: torch.randn(b, 6, 39, generator=g)),
    "unet1d_paper": (lambda: unet.unet1d_paper(), (8, 4), lambda b, g: torch.randn(b, 6, 39, generator=g)),
    "unet2d_tiny": (lambda: unet.unet2d_tiny(10), (3, 32, 32), lambda b, g: torch.randint(0, 10, (b,), generator=g)),
    "unet2d_small": (lambda: unet.unet2d_small(10), (3, 32, 32), lambda b, g: torch.randint(0, 10, (b,), generator=g)),
    "unet2d_paper": (lambda: unet.unet2d_paper(500), (3, 32, 32),
                     lambda b, g: torch.randint(0, 500, (b,), generator=g)),
}
STEP_ROWS = ("finetune", "ewc", "replay", "tr", "ftml", "vrmcl", "ftml --second-order", "vrmcl --second-order")
# a row with " +compile" runs the method with compile_denoiser(model, compile_mode); " +bf16" with its forward passes
# under bf16 autocast; " +two-calls" runs replay/tr's network twice, on the current and on the replay batch, instead
# of once on both (trust_region.joint_mean_losses); " +sync" reads every logged value (float(v)) after every step,
# the per-step host synchronisation that the training loops avoid


def _step_learner(row, base, sched, old_tasks, device, compile_mode):
    """A learner for a benchmark row on a fresh copy of `base`, with Fishers and a teacher where needed."""
    method, second_order = row.split()[0], "--second-order" in row
    model = copy.deepcopy(base)
    learner = learners.make_learner(method, model, sched, lam=1.0, second_order=second_order, bf16="+bf16" in row)
    if "+compile" in row:
        experiment.compile_denoiser(model, compile_mode)
    if "+two-calls" in row:
        learner.joint = False
    if learner.replay_loss_fn is not None:
        teacher = replay.frozen_copy(model)
        if "+compile" in row:
            experiment.compile_denoiser(teacher, compile_mode)
        learner.replay_loss_fn.set_teacher(teacher)
    if learners.uses_fisher(method):  # random rank-1 Fishers: the step costs the same as with estimated ones
        theta = fisher.flat_params(model)
        for k in range(old_tasks):
            mu = torch.randn(theta.shape, generator=torch.Generator().manual_seed(k)).to(device) * 1e-3
            learner.add_fisher(fisher.Rank1Fisher(mu, 1.0, float(mu.double() @ theta.double())))
    return learner


def step_times(model_name="unet1d_small", batch_size=32, rounds=12, old_tasks=1, device="cpu", rows=STEP_ROWS,
          compile_mode="default", chain=1, profile=False):
    """Seconds of every training step of each row, {row: [seconds per step, one value per round]}, measured in
    interleaved rounds so that drift in machine load affects all rows alike. Each round times `chain` consecutive
    steps of every row between two device synchronisations (chain > 1: throughput, with the host running ahead of
    the device as in a training loop; chain = 1: latency). profile=True also returns a function row ->
    profile_steps(...) of one step of that row, to call after the timing has been reported."""
    device = torch.device(device)
    factory, shape, make_cond = STEP_MODELS[model_name]
    torch.manual_seed(0)
    base = factory().to(device)
    sched = diffusion.Schedule()
    g = torch.Generator().manual_seed(0)
    pool = replay.ReplayPool(storage_device=device)  # random stand-in samples: the content does not change cost
    for k in range(old_tasks):
        pool.add(k, torch.randn(4 * batch_size, *shape, generator=g), make_cond(4 * batch_size, g))
    by_row = {row: _step_learner(row, base, sched, old_tasks, device, compile_mode) for row in rows}
    times = {row: [] for row in rows}

    def run(row, learner, batch, replay_batch, steps):
        step_gen = torch.Generator(device).manual_seed(1)
        for _ in range(steps):
            logs = learner.step(batch, replay_batch if learners.uses_replay(row.split()[0]) else None, step_gen)
            if "+sync" in row:
                logs = {name: float(v) for name, v in logs.items()}

    for _ in tqdm(range(rounds), desc="bench rounds"):
        batch = (torch.randn(batch_size, *shape, generator=g).to(device), make_cond(batch_size, g).to(device))
        replay_batch = pool.sample(batch_size, g, device)
        for row, learner in by_row.items():
            _synchronize(device)
            start = time.perf_counter()
            run(row, learner, batch, replay_batch, chain)
            _synchronize(device)
            times[row].append((time.perf_counter() - start) / chain)
    if not profile:
        return times
    # the profile: one step (profiling on the device is slow to collect)
    return times, lambda row: profile_steps(lambda: run(row, by_row[row], batch, replay_batch, 1), device, 1)


def _short(kernel: str) -> str:
    """A kernel's name without its return type, namespaces and template arguments, for the profile table."""
    name = re.sub(r"^void |\(anonymous namespace\)::|[a-z_]+::", "", kernel)
    return name.split("<")[0].split("(")[0][:48]


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_steps(fn, device, steps):
    """Where the time of `steps` training steps (fn runs them) goes, from torch.profiler: {"wall_ms", "kernel_ms"
    (summed time of the device's kernels; on the CPU the summed self time of the operators), "kernels" (launches),
    "top": [(name, ms)] the five largest by self time}, each per step. kernel_ms / wall_ms far below 1 means the
    step waits on the host (kernel launches, Python), not on the device's arithmetic."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        _synchronize(device)
        wall = time.perf_counter() - start
    kind = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind]
    self_us = (lambda e: e.self_device_time_total) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
    top = sorted(events, key=self_us, reverse=True)[:5]
    return {"wall_ms": 1e3 * wall / steps, "kernel_ms": sum(map(self_us, events)) / 1e3 / steps,
            "kernels": sum(e.count for e in events) / steps, "top": [(e.key, self_us(e) / 1e3 / steps) for e in top]}

# --------------------------------------------------------------------------------------------------
# fisher: the batched rank-1 estimate against the authors' one-sample loop


def fisher_times(model_name="unet1d_small", samples=256, batch=64, device="cpu", skip_loop=False) -> None:
    """Times Rank1Fisher.estimate against estimate_loop on the same batches with pre-drawn noise; prints both."""
    dev = torch.device(device)
    torch.manual_seed(0)
    g = torch.Generator(device=dev).manual_seed(0)
    s = diffusion.Schedule()
    if model_name.startswith("unet1d"):
        model = getattr(unet, model_name)().to(dev)
        make = lambda n: (torch.rand(n, 8, 4, generator=g, device=dev) * 2 - 1,  # noqa: E731
                          torch.rand(n, 6, 39, generator=g, device=dev) * 2 - 1)
    else:
        model = getattr(unet, model_name)(num_classes=500).to(dev)
        make = lambda n: (torch.rand(n, 3, 32, 32, generator=g, device=dev) * 2 - 1,  # noqa: E731
                          torch.randint(0, 500, (n,), generator=g, device=dev))
    batches = [diffusion.with_noise(s, make(batch), g) for _ in range(samples // batch)]
    loss = diffusion.DenoisingLoss(s)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fisher.Rank1Fisher.estimate(model, loss, batches[:1], diag_samples=0)          # warm-up
    sync(); t0 = time.perf_counter()
    fast = fisher.Rank1Fisher.estimate(model, loss, batches, diag_samples=0)
    sync(); t_fast = time.perf_counter() - t0
    P = sum(q.numel() for q in fisher.params_list(model))
    print(f"model {model_name} ({P / 1e6:.2f}M params), {samples} samples, batch {batch}, device {dev}")
    print(f"batched estimate: {t_fast:.2f} s ({samples / t_fast:.1f} samples/s)")
    if not skip_loop:
        sync(); t0 = time.perf_counter()
        slow = fisher.Rank1Fisher.estimate_loop(model, loss, batches, store_dtype=torch.float32)
        sync(); t_slow = time.perf_counter() - t0
        rel = abs(fast.c_star - slow.c_star) / slow.c_star
        print(f"one-sample loop:  {t_slow:.2f} s ({samples / t_slow:.1f} samples/s)")
        print(f"speed-up batched / loop: {t_slow / t_fast:.1f}x; relative difference in c*: {rel:.1e}")

# --------------------------------------------------------------------------------------------------
# unet: parameter counts and forward+backward timings


def time_train_step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                    reps: int) -> float:
    """Median seconds of one forward + backward of the mean squared output (no optimizer), after one warm-up."""
    times = []
    for _ in range(reps + 1):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x, t, cond).square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return sorted(times[1:])[reps // 2]


UNET_MODELS = ["unet1d_paper", "unet2d_paper", "unet1d_tiny", "unet2d_tiny"]


def unet_times(models=UNET_MODELS, device="cpu", reps=5, batch_1d=256, batch_2d=16, counts_only=False) -> None:
    """Prints the paper denoisers' parameter counts against Table 6, then (unless counts_only) the median
    forward+backward time of each of `models`."""
    builders = {"unet2d_paper(num_classes=500)": (unet.unet2d_paper, 37.45e6),
                "unet1d_paper(obs_dim=39, obs_horizon=6, action_dim=4, horizon=8)": (unet.unet1d_paper, 83.27e6)}
    for name, (build, paper) in builders.items():
        with torch.device("meta"):  # count without allocating
            n = unet.count_parameters(build())
        print(f"{name}: {n:,} parameters (paper {paper / 1e6:.2f}M, {100 * (n - paper) / paper:+.2f}%)")
    if counts_only:
        return
    dev = torch.device(device)
    torch.manual_seed(0)
    b1, b2 = batch_1d, batch_2d
    cases = {  # name -> (builder, x, cond); built only when selected
        "unet1d_paper": (unet.unet1d_paper, torch.randn(b1, 8, 4), torch.randn(b1, 6, 39)),
        "unet2d_paper": (unet.unet2d_paper, torch.randn(b2, 3, 32, 32), torch.randint(0, 500, (b2,))),
        "unet1d_tiny": (unet.unet1d_tiny, torch.randn(8, 8, 4), torch.randn(8, 6, 39)),
        "unet2d_tiny": (unet.unet2d_tiny, torch.randn(8, 3, 32, 32), None),
    }
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, fp32, median of {reps}")
    for name in models:
        build, x, cond = cases[name]
        model = build().to(dev)
        t = torch.randint(0, 1000, (x.shape[0],), device=dev)
        sec = time_train_step(model, x.to(dev), t, None if cond is None else cond.to(dev), reps)
        print(f"{name}: batch {x.shape[0]} x {tuple(x.shape[1:])}: forward+backward {1000 * sec:.1f} ms "
              f"({1 / sec:.1f} it/s)")

# --------------------------------------------------------------------------------------------------
# rollouts and sampling: the training scripts' --bench, with the script's Config and denoiser


def cw10_rollouts(cfg, model, task: str, device) -> None:
    """train_cw10.py --bench: rollout_batch evaluation episodes of `task` one at a time, batched in this process and
    batched in env_workers processes (if > 0); demo collection in one process and with `workers`. cfg: train_cw10's
    Config, model: its denoiser. Environments are built and the denoiser compiled (cfg.compile) before the clock
    starts; both batched ways run the same episodes with the same noise."""
    sched = diffusion.Schedule(cfg.train_timesteps, prediction=cfg.prediction)
    mode = experiment.compile_denoiser(model, cfg.compile)
    lo, hi = cw10_data.obs_bounds(cw10_data.make_env(task, cfg.max_path_length))
    par = f"batched in {cfg.env_workers} env workers"
    ways = {"one at a time": (1, 0), "batched": (cfg.rollout_batch, 0)}
    if cfg.env_workers:
        ways[par] = (cfg.rollout_batch, cfg.env_workers)
    seconds, success = {}, {}
    for name, (batch, workers) in ways.items():
        c, envs = dataclasses.replace(cfg, rollout_batch=batch), cw10_data.EnvPool(workers, cfg.max_path_length)
        for T in (c.action_chunk, c.max_path_length):  # warm-up (one re-plan: build, compile), then timed
            t0 = time.perf_counter()
            success[name], _ = cw10_data.run_episodes(
                model, sched, dataclasses.replace(c, max_path_length=T), task, cfg.rollout_batch,
                cw10_data.EPISODES_EVAL, torch.Generator(device).manual_seed(0), envs, lo, hi, device)
            seconds[name] = time.perf_counter() - t0
        envs.close()
    print(f"rollouts ({cfg.rollout_batch} {task} episodes x {cfg.max_path_length} steps, DDIM {cfg.ddim_steps}, model "
          f"{cfg.model}, {device}, compile {mode}): " + ", ".join(
              f"{name} {s:.1f}s ({seconds['one at a time'] / s:.2f}x)" for name, s in seconds.items())
          + (f"; env workers / batched {seconds['batched'] / seconds[par]:.2f}x, same successes: "
             f"{np.array_equal(success[par], success['batched'])}" if cfg.env_workers else ""))
    workers = cfg.workers or os.cpu_count() or 1
    sizes, rate, start = (4 * workers, 12 * workers), {}, {}
    for w in sorted({1, workers}):  # two sizes: the difference of the wall times is free of the pool's start
        wall = []
        for n in sizes:
            t0 = time.perf_counter()
            cw10_data.collect_demos(dataclasses.replace(cfg, demo_keep="all", workers=w, demos_per_task=n,
                                                        progress=False), task)
            wall.append(time.perf_counter() - t0)
        rate[w] = (sizes[1] - sizes[0]) / (wall[1] - wall[0])
        start[w] = wall[0] - sizes[0] / rate[w]
    print(f"demo collection ({task}, {cfg.max_path_length} steps per episode; {sizes[0]} and {sizes[1]} episodes): "
          + ", ".join(f"{w} worker{'s' * (w > 1)} {rate[w]:.2f} episodes/s + {start[w]:.1f}s start" for w in rate)
          + f" ({rate[workers] / rate[1]:.2f}x); 10 tasks x 2,500 demos in "
            f"{10 * (start[workers] + 2500 / rate[workers]) / 60:.0f} min")


def image_sampling(cfg, model, generate, extractor, device) -> None:
    """train_imagenet.py --bench: DDIM sampling (through the script's `generate`) and FID feature extraction images/s,
    each on one batch of sample_batch images. cfg: train_imagenet's Config, model: its denoiser."""
    mode = experiment.compile_denoiser(model, cfg.compile)
    labels, sched = torch.arange(cfg.sample_batch) % (cfg.num_tasks * cfg.classes_per_task), \
        diffusion.Schedule(prediction=cfg.prediction)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for reps in (1, 3):  # the first call warms up
        sync()
        t0 = time.perf_counter()
        generate(model, sched, labels, cfg.image_size, cfg.ddim_steps, torch.Generator(device).manual_seed(0),
                 cfg.sample_batch, device)
        sync()
    print(f"DDIM-{cfg.ddim_steps} sampling, unet2d_{cfg.model}, batch {cfg.sample_batch}, {device}, compile {mode}: "
          f"{cfg.sample_batch / (time.perf_counter() - t0):.1f} images/s")
    extractors = [extractor] + ([fid.FeatureExtractor(fid.FIDInceptionV3(), "inception-random-weights", 2048, device)]
                                if extractor.is_proxy else [])  # no weights file: time Inception's cost anyway
    images = torch.randint(0, 256, (cfg.sample_batch, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    for ext in extractors:
        ext.features(images[:8], batch_size=8)
        sync()
        t0 = time.perf_counter()
        ext.features(images, batch_size=cfg.sample_batch)
        sync()
        print(f"FID features ({ext.name}, {ext.dim}-d), batch {cfg.sample_batch}, {device}: "
              f"{cfg.sample_batch / (time.perf_counter() - t0):.1f} images/s")


# --------------------------------------------------------------------------------------------------
# command line


def main(argv=None):
    parser = runfiles.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=runfiles.Parser)
    step = sub.add_parser("step", help="the training step of all six methods against finetune")
    step.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    step.add_argument("--model", default="unet1d_small", choices=sorted(STEP_MODELS))
    step.add_argument("--batch", type=int, default=32, help="current batch size (replay batch: the same)")
    step.add_argument("--steps", type=int, default=10, help="timed steps per method (median), after 2 warm-up")
    step.add_argument("--old-tasks", type=int, default=1, help="past tasks: Fishers and replay pools")
    step.add_argument("--methods", default=",".join(learners.METHODS),
                      help="comma-separated methods (default: all six)")
    step.add_argument("--no-second-order", action="store_true", help="skip the second-order rows")
    step.add_argument("--compile", default="off", choices=[m for m in experiment.COMPILE_MODES if m != "auto"],
                      help="also time every first-order row compiled with this torch.compile mode (+compile rows)")
    step.add_argument("--sync", action="store_true", help="also time every row reading its logged values after "
                                                          "every step (+sync rows: a host sync per step)")
    step.add_argument("--bf16", action="store_true", help="also time every first-order row with its forward "
                                                          "passes under bf16 autocast (+bf16 rows)")
    step.add_argument("--two-calls", action="store_true", help="also time replay and tr with two network calls "
                                                               "per step, not one on both batches (+two-calls rows)")
    step.add_argument("--chain", type=int, default=1, help="consecutive steps per timing (1: latency of one step; "
                                                           "more: throughput as in a training loop)")
    step.add_argument("--profile", action="store_true", help="after timing, profile one step of every row: "
                                                             "device kernel time and launches")
    step.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    fish = sub.add_parser("fisher", help="the batched rank-1 Fisher estimate against the one-sample loop")
    fish.add_argument("--model", default="unet1d_small",
                      choices=[f"unet{d}_{s}" for d in ("1d", "2d") for s in ("tiny", "small", "paper")])
    fish.add_argument("--samples", type=int, default=256)
    fish.add_argument("--batch", type=int, default=64)
    fish.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    fish.add_argument("--skip-loop", action="store_true", help="time only the batched estimate")
    net = sub.add_parser("unet", help="parameter counts of the paper denoisers; forward+backward times")
    net.add_argument("--counts-only", action="store_true", help="print the parameter counts only")
    net.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    net.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    net.add_argument("--batch-1d", type=int, default=256, help="batch for unet1d_paper (Table 4: 256)")
    net.add_argument("--batch-2d", type=int, default=16, help="batch for unet2d_paper (Table 3: 128)")
    net.add_argument("--models", nargs="+", default=UNET_MODELS, choices=UNET_MODELS, help="what is timed")
    net.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    runfiles.check_device(args.device)
    if args.command == "fisher":
        if args.samples < 1 or args.batch < 1 or args.samples % args.batch:
            fish.error("--samples must be a positive multiple of --batch")
        return fisher_times(args.model, args.samples, args.batch, args.device, args.skip_loop)
    if args.command == "unet":
        if args.threads < 0 or min(args.reps, args.batch_1d, args.batch_2d) < 1:
            net.error("--threads must be >= 0; --reps and the batch sizes >= 1")
        if args.threads:
            torch.set_num_threads(args.threads)
        return unet_times(args.models, args.device, args.reps, args.batch_1d, args.batch_2d, args.counts_only)
    if args.batch < 2 or args.batch % 2:
        step.error(f"--batch must be even and >= 2 (support/query split), got {args.batch}")
    if args.steps < 1 or args.old_tasks < 1 or args.chain < 1:
        step.error("--steps, --old-tasks and --chain must be >= 1")
    step_report(args, step)


def step_report(args, step) -> None:
    """`bench.py step`: the rows chosen by the flags, timed by step_times, as a markdown table (and the profile)."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in learners.METHODS for m in methods):
        step.error(f"--methods must name methods of {learners.METHODS}, got {args.methods!r}")
    experiment.setup_torch(args.device, args.threads or 0)  # the training scripts' settings (TF32 on CUDA)
    rows = [r for r in STEP_ROWS if r.split()[0] in methods and not (args.no_second_order and "--second" in r)]
    # torch.compile's autograd does not support the double backward of the second-order rows: eager only
    rows += [f"{r} +compile" for r in rows if args.compile != "off" and "--second" not in r]
    rows += [f"{r} +bf16" for r in rows if args.bf16 and "--second" not in r]
    rows += [f"{r} +two-calls" for r in rows if args.two_calls and r.split()[0] in ("replay", "tr") and "+" not in r]
    rows += [f"{r} +sync" for r in rows if args.sync and "+compile" not in r and "+bf16" not in r]
    times = step_times(args.model, args.batch, args.steps + 2, args.old_tasks, args.device, rows, args.compile,
                  args.chain, args.profile)
    times, profile_row = times if args.profile else (times, None)
    # 2 warm-up rounds: compilation, and VR-MCL's first step (without a previous iterate)
    sec = {row: float(torch.tensor(t[2:]).median()) for row, t in times.items()}
    n_params = sum(p.numel() for p in STEP_MODELS[args.model][0]().parameters())
    print(f"model {args.model} ({n_params / 1e6:.2f}M params), batch {args.batch} current + {args.batch} replay, "
          f"{args.old_tasks} old task(s), device {args.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, compile {args.compile}, median of {args.steps} interleaved rounds of "
          f"{args.chain} step(s) after 2 warm-up rounds (their time: compilation)")
    first = rows[0]
    print(f"| method | ms / step | it/s | x {first} | x same method (eager, no sync) | warm-up s |\n"
          f"|---|---:|---:|---:|---:|---:|")
    for row in rows:
        base = re.sub(r" \+(compile|bf16|two-calls|sync)", "", row)
        vs_base = f"{sec[row] / sec[base]:.2f}" if row != base else "-"
        print(f"| {row} | {1000 * sec[row]:.1f} | {1 / sec[row]:.2f} | {sec[row] / sec[first]:.2f} | {vs_base} | "
              f"{args.chain * sum(times[row][:2]):.1f} |")
    if profile_row:
        print("\nprofile of one step per row: wall ms, device-busy ms (summed kernel time), kernel launches, the "
              "largest kernels by self time")
        print("| row | wall ms | busy ms | busy / wall | launches | top kernels (ms) |\n|---|---:|---:|---:|---:|---|")
        for row in rows:
            p = profile_row(row)
            top = "; ".join(f"{_short(name)} {ms:.2f}" for name, ms in p["top"])
            print(f"| {row} | {p['wall_ms']:.1f} | {p['kernel_ms']:.1f} | {p['kernel_ms'] / p['wall_ms']:.2f} | "
                  f"{p['kernels']:.0f} | {top} |")


if __name__ == "__main__":
    runfiles.run(main)  # bad input one line and exit 2, Ctrl-C 130: runfiles' endings
