"""Continual meta-learning baselines: FTML (Finn et al. 2019) and VR-MCL (Wu et al. 2024), as the paper ran them.

Paper Section 4 ("Baselines", 4.1/4.2 implementation details), Tables 3-4, Appendix C.3, reference notes §3.

Notation: theta = model parameters, alpha = inner (SGD) learning rate, L_s / L_q = support / query loss,
xi_b = the b-th training batch (current batch + replay batch), r = VR-MCL's momentum ratio.

Support / query split. Each training batch, and the replay batch beside it, is split exactly in two:
    support = current[0::2] ∪ replay[0::2],   query = current[1::2] ∪ replay[1::2]
(even / odd positions; an odd batch is an error). A ReplayPool returns replay batches in task blocks, so
the even/odd rule puts every old task in both halves (a first-half / second-half rule would not).
Each loss is L = mean(loss_fn(current part)) + beta * mean(replay_loss_fn(replay part)), beta = 1.

FTML (Finn et al. 2019, Online Meta-Learning, Eq. for the FTML update; MAML with one inner step):
    U(theta)   = theta - alpha * grad L_s(theta)                          inner SGD step, alpha = 1e-4
    g(theta)   = d/dtheta L_q(U(theta))
               = (I - alpha H_s(theta)) grad L_q(U(theta))               second order (paper Eq. 10)
               ~ grad L_q(U(theta))                                      first order (default)
    theta      <- Adam(theta, g(theta)),  lr 2e-4                         (Tables 3-4)
Both orders run the same code: the inner gradient is taken with `create_graph=second_order`. Without
the graph it is a constant, so d U / d theta = I and autograd returns the first-order gradient.

VR-MCL (Wu et al., ICLR 2024), STORM-style variance-reduced meta-gradient:
    m_b = g(theta_b; xi_b) + r * (m_{b-1} - g(theta_{b-1}; xi_b)),   m_0 = g(theta_0; xi_0)
    theta_{b+1} <- Adam(theta_b, m_b)
g(theta_{b-1}; xi_b) is the meta-gradient at the previous iterate on the SAME batch and the same noise
(t, eps): about twice FTML's cost (paper Table 7: 41 h vs 29 h on CW10).
r = 0.15: the value in the official run commands for Seq-CIFAR-100 and Seq-TinyImageNet
(WuYichen-97/Meta-Continual-Learning-Revisited-ICLR2024, README.md, `--s_momentum 0.15`; 0.25 for
Seq-CIFAR-10; the argparse default in `models/vrmcl.py` is 0.8 but the flag is required). The paper does
not report r.

Benchmark: `python meta_baselines.py --bench [--device cuda] [--model unet1d_paper] [--batch 128]` times one
training step of every method (and of FTML / VR-MCL with --second-order) against finetune; --compile MODE adds
each method compiled (compile_denoiser), --sync each method reading its logs after every step; results/*/README.md.

Deviations from the paper / the original methods:
  - VR-MCL's official code applies m_b with plain SGD (`p -= s_lr * m`, s_lr 0.35, `--asyn_update`), and
    learns per-parameter inner learning rates (La-MAML style, `task_lr`); the paper uses "Adam (outer), SGD
    (inner)" with inner lr 1e-4 for both meta baselines (Tables 3-4), so here m_b feeds Adam and alpha is fixed.
  - The official code clamps the inner gradient to +-grad_clip_norm; here the inner step is plain SGD
    (as in FTML and the paper's description); `grad_clip` clips the outer gradient (or m_b) by norm.
  - FTML's original follow-the-leader buffer over all past tasks' data is replaced by generative replay in
    support and query, replay ratio 1.0 (paper Section 4: "we replace experience replay with generative replay").
  - VR-MCL's state (theta_{b-1}, m_{b-1}) carries over task boundaries, as in the official code
    (its momentum list is never reset; the previous iterate is the current one at a task start).
"""
import argparse
import contextlib
import copy
import re
import time

import torch
from torch.func import functional_call
from tqdm import tqdm

import diffusion
import fisher
import replay
import trust_region
import unet

# --------------------------------------------------------------------------------------------------
# Support / query split and the meta-gradient


def split_support_query(batch):
    """Split a batch tuple (x0, cond[, t, eps]) into (support, query) by even / odd position.

    Raises ValueError when the batch size is odd: the split must be exact (Tables 3-4: 64+64, 128+128).
    """
    n = batch[0].shape[0]
    if n % 2:
        raise ValueError(f"support/query split needs an even batch size, got {n}")
    support = tuple(None if x is None else x[0::2] for x in batch)
    query = tuple(None if x is None else x[1::2] for x in batch)
    return support, query


class _AtParams:
    """Call `model` with the parameters in `params` (a name -> tensor dict): model(x_t, t, cond)."""

    def __init__(self, model, params):
        self.model, self.params = model, params

    def __call__(self, *args):
        return functional_call(self.model, self.params, args)


def _objective(fn_model, loss_fn, replay_loss_fn, beta, batch, replay_batch, generator):
    """L = mean(loss_fn(batch)) + beta * mean(replay_loss_fn(replay_batch)) (Eq. 7 with replay ratio 1.0)."""
    loss_cur = loss_fn(fn_model, batch, generator).mean()
    if replay_batch is None:
        return loss_cur, loss_cur, None
    loss_replay = replay_loss_fn(fn_model, replay_batch, generator).mean()
    return loss_cur + beta * loss_replay, loss_cur, loss_replay


def meta_gradient(model, params, loss_fn, replay_loss_fn, batch, replay_batch=None, inner_lr=1e-4, beta=1.0,
                  second_order=False, generator=None, bf16=False):
    """One-inner-step MAML meta-gradient at `params` (name -> leaf tensor requiring grad).
    bf16: the forward passes under bf16 autocast (trust_region.forward_precision); gradients stay float32.

    Returns (grads, logs): grads is a list aligned with params.values(), zeros for unused parameters.
    The support loss draws its noise from `generator` first, then the query loss.
    """
    support, query = split_support_query(batch)
    rep_support, rep_query = (None, None) if replay_batch is None else split_support_query(replay_batch)
    names, leaves = list(params), list(params.values())

    device = leaves[0].device
    with trust_region.forward_precision(device, bf16):
        loss_s, _, _ = _objective(_AtParams(model, params), loss_fn, replay_loss_fn, beta, support, rep_support,
                                  generator)
    inner = torch.autograd.grad(loss_s, leaves, create_graph=second_order, allow_unused=True)
    adapted = {n: p if g is None else p - inner_lr * g for n, p, g in zip(names, leaves, inner)}  # U(theta)

    with trust_region.forward_precision(device, bf16):
        loss_q, loss_cur, loss_replay = _objective(_AtParams(model, adapted), loss_fn, replay_loss_fn, beta, query,
                                                   rep_query, generator)
    outer = torch.autograd.grad(loss_q, leaves, allow_unused=True)  # d L_q(U(theta)) / d theta
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, outer)]
    logs = {"loss": loss_q.detach(), "loss_support": loss_s.detach(), "loss_cur": loss_cur.detach()}
    if loss_replay is not None:
        logs["loss_replay"] = loss_replay.detach()
    return grads, logs


# --------------------------------------------------------------------------------------------------
# Learners (same interface as trust_region.TrustRegionLearner)


class FTMLLearner:
    """FTML with one inner SGD step and an Adam outer step; first order unless second_order=True."""

    def __init__(self, model, loss_fn, replay_loss_fn=None, lr=2e-4, inner_lr=1e-4, beta=1.0, second_order=False,
                 grad_clip=None, bf16=False):
        self.model, self.loss_fn, self.replay_loss_fn, self.bf16 = model, loss_fn, replay_loss_fn, bf16
        self.inner_lr, self.beta, self.second_order, self.grad_clip = inner_lr, beta, second_order, grad_clip
        self.named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        params = list(self.named.values())
        self.opt = torch.optim.Adam(params, lr=lr, fused=params[0].is_cuda)  # outer Adam, Tables 3-4

    def _meta_gradient(self, params, batch, replay_batch, generator):
        if replay_batch is not None and self.replay_loss_fn is None:
            raise ValueError("a replay batch was given but the learner has no replay_loss_fn")
        return meta_gradient(self.model, params, self.loss_fn, self.replay_loss_fn, batch, replay_batch,
                             self.inner_lr, self.beta, self.second_order, generator, self.bf16)

    def _direction(self, batch, replay_batch, generator):
        """The outer gradient to hand to Adam: the meta-gradient at the current parameters."""
        return self._meta_gradient(self.named, batch, replay_batch, generator)

    def _apply(self, direction):
        params = list(self.named.values())
        for p, d in zip(params, direction):
            p.grad = d.detach().clone()
        grad_norm = trust_region.grad_norm_and_clip(params, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return grad_norm

    def step(self, batch, replay_batch=None, generator=None, log_terms=False):
        """One meta-update on a training batch (and a replay batch of the same size) -> dict of 0-d tensors
        (no host sync). log_terms is accepted for the learners' common interface; Eq. (9)'s terms do not
        exist here."""
        direction, logs = self._direction(batch, replay_batch, generator)
        logs["grad_norm"] = self._apply(direction)
        return logs

    def state_dict(self):
        return {"optimizer": self.opt.state_dict()}

    def load_state_dict(self, sd):
        self.opt.load_state_dict(sd["optimizer"])


class VRMCLLearner(FTMLLearner):
    """VR-MCL: FTML whose meta-gradient is replaced by the STORM estimate m_b before the Adam step."""

    def __init__(self, model, loss_fn, replay_loss_fn=None, lr=2e-4, inner_lr=1e-4, beta=1.0, second_order=False,
                 grad_clip=None, r=0.15, bf16=False):
        super().__init__(model, loss_fn, replay_loss_fn, lr, inner_lr, beta, second_order, grad_clip, bf16)
        self.r = r  # official run commands: --s_momentum 0.15 (see module docstring)
        self.prev_params = None  # theta_{b-1}: list of tensors
        self.momentum = None  # m_{b-1}: list of tensors

    def _direction(self, batch, replay_batch, generator):
        if generator is None:  # both evaluations must see the same noise: make the stream explicit
            generator = torch.Generator(batch[0].device)
            generator.manual_seed(int(torch.randint(2**62, ())))
        rng_state = generator.get_state()
        g_cur, logs = self._meta_gradient(self.named, batch, replay_batch, generator)  # g(theta_b; xi_b)
        current = [p.detach().clone() for p in self.named.values()]
        if self.momentum is None:
            m = g_cur  # m_0 = g(theta_0; xi_0)
        else:
            end_state = generator.get_state()
            generator.set_state(rng_state)  # same t, eps draws for the previous iterate
            prev = {n: p.requires_grad_(True) for n, p in zip(self.named, self.prev_params)}
            g_prev, _ = self._meta_gradient(prev, batch, replay_batch, generator)  # g(theta_{b-1}; xi_b)
            generator.set_state(end_state)
            # STORM (Wu et al. 2024): m_b = g(theta_b; xi_b) + r (m_{b-1} - g(theta_{b-1}; xi_b))
            m = [g + self.r * (m_old - g_old) for g, m_old, g_old in zip(g_cur, self.momentum, g_prev)]
        self.prev_params = current
        self.momentum = [x.detach() for x in m]
        return self.momentum, logs

    def state_dict(self):
        return {"optimizer": self.opt.state_dict(), "prev_params": self.prev_params, "momentum": self.momentum}

    def load_state_dict(self, sd):
        self.opt.load_state_dict(sd["optimizer"])
        self.prev_params, self.momentum = sd["prev_params"], sd["momentum"]


# --------------------------------------------------------------------------------------------------
# Choosing a method by name


METHODS = ("finetune", "ewc", "replay", "tr", "ftml", "vrmcl")


def _check(method):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def uses_replay(method):
    _check(method)
    return method in ("replay", "tr", "ftml", "vrmcl")


def uses_fisher(method):
    _check(method)
    return method in ("ewc", "tr")


def replay_kind(method):
    """Which replay loss a method uses: "distill" for replay/tr (Section 4: generative distillation,
    Masip et al. 2025); "generative" (true eps) for ftml/vrmcl, whose experience replay the paper replaces
    with generated samples that join the support and query sets as ordinary data. None without replay."""
    _check(method)
    if not uses_replay(method):
        return None
    return "distill" if method in ("replay", "tr") else "generative"


def make_learner(method, model, sched, cfg):
    """The learner of `method` for a diffusion model: the Eq. (3) loss on current batches and, for replay
    methods, the replay loss of `replay_kind(method)` (learner.replay_loss_fn, a replay.ReplayLoss whose
    teacher the caller sets at each task boundary). cfg is any object with (some of) lr, lam, beta,
    inner_lr, vr_momentum, second_order, grad_clip, bf16, ema. All learners share
    step(batch, replay_batch=None, generator=None, log_terms=False) -> dict of 0-d tensors."""
    _check(method)
    loss_fn = diffusion.DenoisingLoss(sched)
    kind = replay_kind(method)
    replay_loss = replay.ReplayLoss(kind, sched) if kind else None
    lr = getattr(cfg, "lr", 2e-4)  # Tables 3-4
    beta = getattr(cfg, "beta", 1.0)  # replay ratio 1.0, weight 1 (reference notes §2)
    grad_clip = getattr(cfg, "grad_clip", None) or None  # 0 and None both mean "no clipping"
    bf16 = getattr(cfg, "bf16", False)  # bf16 autocast of the forward passes (issue 11); float32 by default
    if method in ("ftml", "vrmcl"):
        kwargs = dict(lr=lr, inner_lr=getattr(cfg, "inner_lr", 1e-4), beta=beta,
                      second_order=getattr(cfg, "second_order", False), grad_clip=grad_clip, bf16=bf16)
        if method == "ftml":
            learner = FTMLLearner(model, loss_fn, replay_loss, **kwargs)
        else:
            learner = VRMCLLearner(model, loss_fn, replay_loss, r=getattr(cfg, "vr_momentum", 0.15), **kwargs)
    else:
        lam = getattr(cfg, "lam", 0.0) if uses_fisher(method) else 0.0
        learner = trust_region.TrustRegionLearner(model, loss_fn, replay_loss, beta=beta if replay_loss else 0.0,
                                                  lam=lam, lr=lr, grad_clip=grad_clip, bf16=bf16)
    ema = getattr(cfg, "ema", 0.0)  # a weight average (ours, off by default)
    return WeightAverage(learner, fisher.params_list(model), ema) if ema else learner


class WeightAverage:
    """A learner whose weights are also averaged: after each step n = 1, 2, ... of the wrapped learner
        avg <- d_n avg + (1 - d_n) theta,   d_n = min(decay, (1 + n) / (10 + n))
    (an exponential moving average with diffusers' EMAModel warm-up, so early averages are not the initial
    weights). Not in the paper (`--ema`, off by default). The loops evaluate the average (`applied`) and keep it at
    each task's end (`adopt`): the Fisher, the anchor theta* and the teacher are then taken at the averaged weights.
    Everything else (step, opt, add_fisher, replay_loss_fn) is the wrapped learner's."""

    def __init__(self, learner, params, decay):
        self.learner, self.params, self.decay, self.n = learner, params, decay, 0
        self.avg = [p.detach().clone() for p in params]

    def __getattr__(self, name):
        return getattr(self.learner, name)

    def step(self, *args, **kwargs):
        logs = self.learner.step(*args, **kwargs)
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1 - d)  # avg + (1 - d) (theta - avg)
        return logs

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block and its trained weights again after it."""
        trained = [p.detach().clone() for p in self.params]
        self.adopt()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, trained)

    def adopt(self):
        """The model takes the averaged weights for good."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.avg)

    def state_dict(self):
        return {"learner": self.learner.state_dict(), "avg": self.avg, "n": self.n}

    def load_state_dict(self, sd):
        self.learner.load_state_dict(sd["learner"])
        with torch.no_grad():
            torch._foreach_copy_(self.avg, [a.to(p.device) for a, p in zip(sd["avg"], self.avg)])
        self.n = sd["n"]


# --------------------------------------------------------------------------------------------------
# The device, and the fast path: the denoiser compiled (issue 11)


def setup_torch(device: str, threads: int = 0) -> torch.device:
    """The one device choice: auto -> cuda if available, else cpu. threads > 0 sets torch's CPU threads.
    The experiment scripts call it as experiment.setup_torch, the bench here."""
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 storage, TF32 matmuls (reference notes §9)
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(device)


COMPILE_MODES = ("auto", "off", "default", "reduce-overhead")


def compile_denoiser(model, mode="auto"):
    """Compile `model`'s forward in place with torch.compile (nn.Module.compile); returns the mode used ("off":
    eager).

    auto: "reduce-overhead" (CUDA graphs, for a launch-bound step) on CUDA, "off" on the CPU, where "default" made
    the small model's step 7% faster after 4-7 s of compilation (results/cpu_speed): too little to give up the eager
    step's plain tracebacks. Whether CUDA graphs reach issue 11's GPU targets is not yet measured. In place, so
    parameters, state_dict keys and the learners' optimizers are unchanged, and every call model(x_t, t, cond) runs
    the compiled code: the training step of every method (forward and backward; FTML / VR-MCL through
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


# --------------------------------------------------------------------------------------------------
# Benchmark: cost per training step of each method against finetune (Table 6 / Table 7 comparison)


BENCH_MODELS = {  # name -> (factory, x0 shape, cond maker (B, generator) -> cond)
    "unet1d_tiny": (lambda: unet.unet1d_tiny(), (8, 4), lambda b, g: torch.randn(b, 6, 39, generator=g)),
    "unet1d_small": (lambda: unet.unet1d_small(), (8, 4), lambda b, g: torch.randn(b, 6, 39, generator=g)),
    "unet1d_paper": (lambda: unet.unet1d_paper(), (8, 4), lambda b, g: torch.randn(b, 6, 39, generator=g)),
    "unet2d_tiny": (lambda: unet.unet2d_tiny(10), (3, 32, 32), lambda b, g: torch.randint(0, 10, (b,), generator=g)),
    "unet2d_small": (lambda: unet.unet2d_small(10), (3, 32, 32), lambda b, g: torch.randint(0, 10, (b,), generator=g)),
    "unet2d_paper": (lambda: unet.unet2d_paper(500), (3, 32, 32),
                     lambda b, g: torch.randint(0, 500, (b,), generator=g)),
}
BENCH_ROWS = ("finetune", "ewc", "replay", "tr", "ftml", "vrmcl", "ftml --second-order", "vrmcl --second-order")
# a row with " +compile" runs the method with compile_denoiser(model, compile_mode); " +bf16" with its forward passes
# under bf16 autocast; " +two-calls" runs replay/tr's network twice, on the current and on the replay batch, instead
# of once on both (trust_region.joint_mean_losses); " +sync" reads every logged value (float(v)) after every step,
# the per-step host synchronisation that the training loops avoid


def _bench_learner(row, base, sched, old_tasks, device, compile_mode):
    """A learner for a benchmark row on a fresh copy of `base`, with Fishers and a teacher where needed."""
    method, second_order = row.split()[0], "--second-order" in row
    model = copy.deepcopy(base)
    learner = make_learner(method, model, sched, argparse.Namespace(lam=1.0, second_order=second_order,
                                                                    bf16="+bf16" in row))
    if "+compile" in row:
        compile_denoiser(model, compile_mode)
    if "+two-calls" in row:
        learner.joint = False
    if learner.replay_loss_fn is not None:
        teacher = replay.frozen_copy(model)
        if "+compile" in row:
            compile_denoiser(teacher, compile_mode)
        learner.replay_loss_fn.set_teacher(teacher)
    if uses_fisher(method):  # random rank-1 Fishers: the step costs the same as with estimated ones
        theta = fisher.flat_params(model)
        for k in range(old_tasks):
            mu = torch.randn(theta.shape, generator=torch.Generator().manual_seed(k)).to(device) * 1e-3
            learner.add_fisher(fisher.Rank1Fisher(mu, 1.0, float(mu.double() @ theta.double())))
    return learner


def bench(model_name="unet1d_small", batch_size=32, rounds=12, old_tasks=1, device="cpu", rows=BENCH_ROWS,
          compile_mode="default", chain=1, profile=False):
    """Seconds of every training step of each row, {row: [seconds per step, one value per round]}, measured in
    interleaved rounds so that drift in machine load affects all rows alike. Each round times `chain` consecutive
    steps of every row between two device synchronisations (chain > 1: throughput, with the host running ahead of
    the device as in a training loop; chain = 1: latency). profile=True also returns a function row ->
    profile_steps(...) of one step of that row, to call after the timing has been reported."""
    device = torch.device(device)
    factory, shape, make_cond = BENCH_MODELS[model_name]
    torch.manual_seed(0)
    base = factory().to(device)
    sched = diffusion.Schedule()
    g = torch.Generator().manual_seed(0)
    pool = replay.ReplayPool(storage_device=device)  # random stand-in samples: the content does not change cost
    for k in range(old_tasks):
        pool.add(k, torch.randn(4 * batch_size, *shape, generator=g), make_cond(4 * batch_size, g))
    learners = {row: _bench_learner(row, base, sched, old_tasks, device, compile_mode) for row in rows}
    times = {row: [] for row in rows}

    def run(row, learner, batch, replay_batch, steps):
        step_gen = torch.Generator(device).manual_seed(1)
        for _ in range(steps):
            logs = learner.step(batch, replay_batch if uses_replay(row.split()[0]) else None, step_gen)
            if "+sync" in row:
                logs = {name: float(v) for name, v in logs.items()}

    for _ in tqdm(range(rounds), desc="bench rounds"):
        batch = (torch.randn(batch_size, *shape, generator=g).to(device), make_cond(batch_size, g).to(device))
        replay_batch = pool.sample(batch_size, g, device)
        for row, learner in learners.items():
            _synchronize(device)
            start = time.perf_counter()
            run(row, learner, batch, replay_batch, chain)
            _synchronize(device)
            times[row].append((time.perf_counter() - start) / chain)
    if not profile:
        return times
    # the profile: one step (profiling on the device is slow to collect)
    return times, lambda row: profile_steps(lambda: run(row, learners[row], batch, replay_batch, 1), device, 1)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the training step of all six methods against finetune.")
    parser.add_argument("--bench", action="store_true", help="run the benchmark (the only action of this script)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--model", default="unet1d_small", choices=sorted(BENCH_MODELS))
    parser.add_argument("--batch", type=int, default=32, help="current batch size (replay batch: the same)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (median), after 2 warm-up")
    parser.add_argument("--old-tasks", type=int, default=1, help="past tasks: Fishers and replay pools")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all six)")
    parser.add_argument("--no-second-order", action="store_true", help="skip the second-order rows")
    parser.add_argument("--compile", default="off", choices=[m for m in COMPILE_MODES if m != "auto"],
                        help="also time every first-order row compiled with this torch.compile mode (+compile rows)")
    parser.add_argument("--sync", action="store_true", help="also time every row reading its logged values after "
                                                            "every step (+sync rows: a host sync per step)")
    parser.add_argument("--bf16", action="store_true", help="also time every first-order row with its forward "
                                                            "passes under bf16 autocast (+bf16 rows)")
    parser.add_argument("--two-calls", action="store_true", help="also time replay and tr with two network calls "
                                                                 "per step, not one on both batches (+two-calls rows)")
    parser.add_argument("--chain", type=int, default=1, help="consecutive steps per timing (1: latency of one step; "
                                                             "more: throughput as in a training loop)")
    parser.add_argument("--profile", action="store_true", help="after timing, profile one step of every row: "
                                                               "device kernel time and launches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch must be even and >= 2 (support/query split), got {args.batch}")
    if args.steps < 1 or args.old_tasks < 1 or args.chain < 1:
        parser.error("--steps, --old-tasks and --chain must be >= 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        parser.error(f"--methods must name methods of {METHODS}, got {args.methods!r}")
    setup_torch(args.device, args.threads or 0)  # the training scripts' settings (TF32 on CUDA)
    rows = [r for r in BENCH_ROWS if r.split()[0] in methods and not (args.no_second_order and "--second" in r)]
    # torch.compile's autograd does not support the double backward of the second-order rows: eager only
    rows += [f"{r} +compile" for r in rows if args.compile != "off" and "--second" not in r]
    rows += [f"{r} +bf16" for r in rows if args.bf16 and "--second" not in r]
    rows += [f"{r} +two-calls" for r in rows if args.two_calls and r.split()[0] in ("replay", "tr") and "+" not in r]
    rows += [f"{r} +sync" for r in rows if args.sync and "+compile" not in r and "+bf16" not in r]
    times = bench(args.model, args.batch, args.steps + 2, args.old_tasks, args.device, rows, args.compile,
                  args.chain, args.profile)
    times, profile_row = times if args.profile else (times, None)
    # 2 warm-up rounds: compilation, and VR-MCL's first step (without a previous iterate)
    sec = {row: float(torch.tensor(t[2:]).median()) for row, t in times.items()}
    n_params = sum(p.numel() for p in BENCH_MODELS[args.model][0]().parameters())
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
    main()
