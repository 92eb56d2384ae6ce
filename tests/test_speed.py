"""Tests of the fast paths: the compiled denoiser against the eager reference for all six methods, and
environments stepped in worker processes against the same environments stepped in this process."""
import dataclasses

import numpy as np
import pytest
import torch

import cw10_data
import diffusion
import fisher
import experiment
import learners
import replay
import train_cw10
import train_imagenet
import unet

# ---------------------------------------------------------------------------------------------------------------
# torch.compile of the denoiser


def test_compile_flag_falls_back_to_eager_on_cpu():
    """auto on the CPU is eager (the model is not touched); a named mode compiles in place (lazily: no compile
    work until the first call), frozen_copy of a compiled model is an eager, independent copy; a bad mode is
    rejected. Catches: auto compiling on the CPU, or a teacher that still calls the student's compiled forward
    (copy.deepcopy keeps the wrapper of the original's _call_impl)."""
    model = unet.unet1d_tiny()
    assert experiment.compile_denoiser(model, "auto") == "off" and model._compiled_call_impl is None
    assert experiment.compile_denoiser(model, "off") == "off" and model._compiled_call_impl is None
    names = list(model.state_dict())
    assert experiment.compile_denoiser(model, "default") == "default" and model._compiled_call_impl is not None
    assert list(model.state_dict()) == names  # in place: checkpoints keep their keys
    teacher = replay.frozen_copy(model)
    assert teacher._compiled_call_impl is None
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), teacher.parameters()))
    with pytest.raises(ValueError, match="unknown compile mode"):
        experiment.compile_denoiser(model, "max-speed")
    for script in (train_cw10, train_imagenet):
        assert script.Config().compile == "auto" and "compile" in script.RUNTIME_FIELDS
        with pytest.raises(SystemExit):
            script.experiment.parse_config(script.Config, script.PRESETS, ["--compile", "fast"], "", script.CHOICES)


def _train_steps(method: str, compiled: bool, device, steps: int = 3, dt=torch.float64, bf16=False):
    """`steps` steps of `method` on unet1d_tiny in `dt` from a fixed init; the last with log_terms (the second
    backward of Eq. 9's norms). Returns (initial and final parameters (P,), logs of the last step as floats, number
    of graphs compiled)."""
    sched = diffusion.Schedule()
    torch.manual_seed(0)
    model = unet.unet1d_tiny().to(device, dt)
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
    learner = learners.make_learner(method, model, sched, lr=1e-3, lam=100.0, inner_lr=1e-2,  # inner_lr 1e-2:
                                    bf16=bf16)                                  # U(theta) far from theta
    if learners.uses_fisher(method):  # an old task's rank-1 Fisher anchored at the initial parameters
        theta = fisher.flat_params(model)
        mu = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=dt).to(device) * 1e-2
        learner.add_fisher(fisher.Rank1Fisher(mu, 1.0, float(mu @ theta)))
    mode = "auto" if device.type == "cuda" else "default"  # the mode a run uses on CUDA; auto is eager on the CPU
    if compiled:
        torch._dynamo.reset()  # forget other tests' graphs: this run must compile its own
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    if compiled:
        experiment.compile_denoiser(model, mode)
    if learner.replay_loss_fn is not None:
        teacher = replay.frozen_copy(model)
        with torch.no_grad():  # a teacher that differs from the student, so distillation has a gradient
            for p in teacher.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2), dtype=dt).to(device))
        if compiled:
            experiment.compile_denoiser(teacher, mode)
        learner.replay_loss_fn.set_teacher(teacher)
    g = torch.Generator().manual_seed(3)
    for s in range(steps):
        batch = (torch.randn(8, 8, 4, generator=g, dtype=dt).to(device),
                 torch.randn(8, 6, 39, generator=g, dtype=dt).to(device))  # (B, S, 4), (B, O, 39)
        replay_batch = (torch.randn(8, 8, 4, generator=g, dtype=dt).to(device),
                        torch.randn(8, 6, 39, generator=g, dtype=dt).to(device))
        logs = learner.step(batch, replay_batch if learners.uses_replay(method) else None,
                            torch.Generator(device).manual_seed(s), log_terms=s == steps - 1)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    return initial, theta, {k: float(v) for k, v in logs.items()}, graphs


@pytest.mark.slow
@pytest.mark.parametrize("method", learners.METHODS)
def test_compiled_step_equals_eager(method):
    """Three steps compiled (torch.compile "default" on the CPU, "reduce-overhead" on CUDA) and eager from the same
    init and batches give the same parameters: max |theta_compiled - theta_eager| <= 2e-6 in float64, where the
    three Adam steps (lr 1e-3) move parameters by 3e-3. Not exact: unet.py computes the timestep embedding in
    float32, where compiled and eager sin/exp differ in the last bit, and Adam's m / sqrt(v) amplifies that on
    parameters with small gradients. Measured on the CPU: 1.6e-7 (finetune, ewc) to 5.1e-7 (replay, tr).
    Catches, by orders of magnitude: a compiled forward that ignores functional_call's parameters (FTML with the
    query gradient at theta instead of U(theta): 5.8e-3 away), a penalty or teacher left out of the fast path
    (tr without term (C): 2.1e-3), a log_terms step that the compiled backward cannot take (retain_graph with
    donated buffers: an error), and a fast path that silently stays eager (no graph compiled)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    initial, theta_eager, logs_eager, _ = _train_steps(method, False, device)
    _, theta_fast, logs_fast, graphs = _train_steps(method, True, device)
    diff, moved = (theta_fast - theta_eager).abs().max(), (theta_eager - initial).abs().max()
    print(f"{method}: {graphs} graphs compiled, max |theta_compiled - theta_eager| {diff:.2e}, moved {moved:.2e}")
    assert graphs > 0 and moved > 1e-3
    assert diff <= 2e-6
    assert logs_fast.keys() == logs_eager.keys()
    for k in logs_eager:
        assert logs_fast[k] == pytest.approx(logs_eager[k], rel=1e-6, abs=1e-9), k


@pytest.mark.parametrize("method", ["tr", "ftml"])
def test_bf16_forward_is_close_to_float32_but_not_equal(method):
    """--bf16 runs the forward passes under bf16 autocast (trust_region.forward_precision), float32 otherwise.
    One step of each from the same init and batch: the logged loss (FTML: the query loss) differs in the bf16
    rounding range (1e-4..3e-2 relative) and the parameter updates point the same way (cosine > 0.95). Catches a
    flag that is not applied (equal losses), FTML's query forward left in float32 (then only the adapted weights
    differ: 5.7e-5 relative, measured), and a bf16 backward or optimizer that breaks the step (cosine far below 1)."""
    cpu = torch.device("cpu")
    out = {b: _train_steps(method, False, cpu, steps=1, dt=torch.float32, bf16=b) for b in (False, True)}
    (initial, theta32, logs32, _), (_, theta16, logs16, _) = out[False], out[True]
    rel = abs(logs16["loss"] - logs32["loss"]) / abs(logs32["loss"])
    cos = torch.nn.functional.cosine_similarity(theta16 - initial, theta32 - initial, dim=0)
    print(f"{method}: loss {logs32['loss']:.6f} (float32) vs {logs16['loss']:.6f} (bf16), rel {rel:.1e}, "
          f"cos of the updates {cos:.4f}")
    assert 1e-4 < rel < 3e-2
    assert cos > 0.95

# ---------------------------------------------------------------------------------------------------------------
# environments in worker processes


@pytest.fixture(scope="module")
def pools():
    """The serial pool and a pool of two worker processes (started once for the module)."""
    serial, parallel = cw10_data.EnvPool(0, 40), cw10_data.EnvPool(2, 40)
    yield serial, parallel
    parallel.close()


def test_env_workers_step_the_expert_like_this_process(pools):
    """The scripted expert drives 5 handle-press-side episodes (3 + 2 per worker) in both pools, one step per
    command, stop_on_success on: observations and successes are identical at every step, some episodes succeed
    before the end and are then frozen. Catches episodes regrouped out of order, a worker that keeps stepping a
    succeeded episode, or seeds applied to the wrong environment."""
    from metaworld.policies import ENV_POLICY_MAP
    policy, seeds = ENV_POLICY_MAP["handle-press-side-v3"](), [11, 12, 13, 14, 15]
    runs = []
    for pool in pools:
        obs, trace = pool.reset("handle-press-side", seeds), []
        for _ in range(40):
            actions = np.stack([np.clip(policy.get_action(o), -1, 1) for o in obs])[:, None]  # (n, 1, 4)
            obs_seq, success = pool.step(actions, stop_on_success=True)  # (1, n, 39), (n,)
            obs = obs_seq[-1]
            trace.append((obs.copy(), success))
        runs.append(trace)
    for (o1, s1), (o2, s2) in zip(*runs):
        assert np.array_equal(o1, o2) and np.array_equal(s1, s2)
    assert runs[0][-1][1].any()
    first = int(np.argmax(runs[0][-1][1]))  # a succeeded episode: its observation no longer changes
    done_at = next(t for t, (_, s) in enumerate(runs[0]) if s[first])
    assert done_at < 39 and all(np.array_equal(o[first], runs[0][done_at][0][first]) for o, _ in runs[0][done_at:])


@pytest.mark.parametrize("record", [False, True])
def test_env_workers_give_the_serial_rollouts(pools, record):
    """run_episodes on the smoke config (tiny denoiser, 3 episodes in batches of 2: one batch leaves a worker
    idle): success arrays and, when recording replay, every re-planning window are identical with 0 and 2 env
    workers for the same seeds and noise."""
    cfg = dataclasses.replace(train_cw10.Config(**train_cw10.PRESETS["smoke"]), max_path_length=40)
    sched = diffusion.Schedule(cfg.train_timesteps)
    torch.manual_seed(0)
    model = train_cw10.build_model(cfg, "cpu")
    lo, hi = cw10_data.obs_bounds(cw10_data.make_env("hammer", cfg.max_path_length))
    out = [cw10_data.run_episodes(model, sched, cfg, "hammer", 3, cw10_data.EPISODES_REPLAY,
                                  torch.Generator().manual_seed(0), pool, lo, hi, "cpu", record=record)
           for pool in pools]
    (ok_serial, rec_serial), (ok_parallel, rec_parallel) = out
    assert ok_serial.shape == (3,) and np.array_equal(ok_serial, ok_parallel)
    if record:
        for (c1, x1), (c2, x2) in zip(rec_serial, rec_parallel):
            assert torch.equal(c1, c2) and torch.equal(x1, x2)
        assert rec_serial[0][0].shape == (2, 20, cfg.obs_horizon, 39)
    else:
        assert rec_serial == rec_parallel == [None, None]


def test_env_worker_error_is_raised_here_and_the_pool_stays_usable(pools):
    """An exception in a worker is raised in this process, naming the worker, after every reply was read: the
    next command gets its own replies (not the stale ones of the failed command)."""
    with pytest.raises(RuntimeError, match="environment worker 0"):
        pools[1].reset("no-such-task", [1, 2, 3])
    assert np.array_equal(pools[1].reset("hammer", [5, 6, 7]), pools[0].reset("hammer", [5, 6, 7]))
