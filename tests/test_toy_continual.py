"""A two-task continual run on a toy 2-D diffusion problem, on the CPU, for each of the six methods.

Task 1: points around (-0.5, -0.5); task 2: points around (+0.5, +0.5); a small MLP denoiser
eps_hat(x_t, t, cond) with the task index as its class label. Every method trains task 1, then task 2
through the same learner interface (make_learner). Replay methods get a DDIM pool from the frozen
task-1 model; ewc / tr get the rank-1 Fisher of task 1. Forgetting is the task-1 eps-loss (Eq. 3, fixed
t and eps) after task 2. The paper's claim, at toy scale: replay and tr forget task 1 less than finetune.
"""
import math
import types

import pytest
import torch

import diffusion
import fisher
import meta_baselines as mb
import replay

CENTERS = (torch.tensor([-0.5, -0.5]), torch.tensor([0.5, 0.5]))
STEPS, BATCH, POOL = 150, 64, 512


class ToyDenoiser(torch.nn.Module):
    """eps_hat = MLP([x_t, sinusoidal(t), embed(cond)]); x_t (B, 2), t (B,) long, cond (B,) long."""

    def __init__(self, hidden=64, t_dim=16, num_classes=2):
        super().__init__()
        self.t_dim = t_dim
        self.embed = torch.nn.Embedding(num_classes, 16)
        self.net = torch.nn.Sequential(torch.nn.Linear(2 + t_dim + 16, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 2))

    def forward(self, x_t, t, cond):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(self.t_dim // 2) / (self.t_dim // 2))
        angles = t.float()[:, None] * freqs[None]  # (B, t_dim / 2)
        h = torch.cat([x_t, angles.sin(), angles.cos(), self.embed(cond)], dim=1)  # (B, 2 + t_dim + 16)
        return self.net(h)  # (B, 2)


def task_data(k, n, generator):
    """n points of task k: N(center_k, 0.15^2 I), labels k. -> (x0 (n, 2), cond (n,))."""
    x0 = CENTERS[k] + 0.15 * torch.randn(n, 2, generator=generator)
    return x0, torch.full((n,), k, dtype=torch.long)


def run(method, seed=0, lam=5.0):
    """Train task 1 then task 2 with `method`; return the task-1 eps-loss at the end of each task."""
    torch.manual_seed(seed)
    sched = diffusion.Schedule()
    model = ToyDenoiser()
    loss_fn = lambda m, batch, generator=None: diffusion.batch_loss(m, sched, batch, generator)  # noqa: E731
    cfg = types.SimpleNamespace(lr=3e-3, lam=lam, beta=1.0, inner_lr=1e-4, vr_momentum=0.15)
    learner = mb.make_learner(method, model, sched, cfg)
    pool = replay.ReplayPool()
    g = torch.Generator().manual_seed(seed)
    test = diffusion.with_noise(sched, task_data(0, 4096, torch.Generator().manual_seed(99)),
                                torch.Generator().manual_seed(98))

    def task1_loss():
        with torch.no_grad():
            return diffusion.batch_loss(model, sched, test).mean().item()

    losses = []
    for k in (0, 1):
        for _ in range(STEPS):
            batch = task_data(k, BATCH, g)
            replay_batch = pool.sample(BATCH, g) if (k > 0 and mb.uses_replay(method)) else None
            logs = learner.step(batch, replay_batch, g)
            assert math.isfinite(logs["loss"].item())
        losses.append(task1_loss())
        if k == 0 and mb.uses_replay(method):  # task boundary: freeze a teacher, build the pool
            teacher = replay.frozen_copy(model)
            learner.replay_loss_fn.set_teacher(teacher)
            pool.rebuild(teacher, sched, [0], replay.label_source(1), POOL, (2,), generator=g, progress=False)
        if k == 0 and mb.uses_fisher(method):
            batches = [diffusion.with_noise(sched, task_data(0, 256, g), g) for _ in range(2)]
            learner.add_fisher(fisher.Rank1Fisher.estimate(model, loss_fn, batches))
    return losses


@pytest.fixture(scope="module")
def results():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is several times faster on a busy 2-core CI machine
    try:
        return {method: run(method) for method in mb.METHODS}
    finally:
        torch.set_num_threads(threads)


def test_every_method_runs_and_learns_task1(results):
    for method, (after_task1, after_task2) in results.items():
        assert after_task1 < 0.2, (method, after_task1)  # eps-loss at init is ~1, learned ~0.1
        assert math.isfinite(after_task2)


def test_replay_and_trust_region_forget_less_than_finetune(results):
    forgetting = {m: after2 - after1 for m, (after1, after2) in results.items()}
    assert forgetting["finetune"] > 0.01, forgetting  # the toy problem does forget
    assert forgetting["replay"] < forgetting["finetune"], forgetting
    assert forgetting["tr"] < forgetting["finetune"], forgetting


if __name__ == "__main__":  # python tests/test_toy_continual.py: print the numbers the tests check
    torch.set_num_threads(1)
    print("| method | task-1 eps-loss after task 1 | after task 2 | forgetting |\n|---|---:|---:|---:|")
    for method in mb.METHODS:
        after1, after2 = run(method)
        print(f"| {method} | {after1:.4f} | {after2:.4f} | {after2 - after1:+.4f} |")
