"""Tests for replay.py: distillation loss identities, pool determinism, sizes, labels and even sampling."""
import pytest
import torch

import diffusion
import replay
import unet


class TinyDenoiser(torch.nn.Module):
    """eps_hat = W [x_t, t/T, onehot(cond)] + b on flat samples (B, D); cond = labels or None."""

    def __init__(self, dim=2, num_classes=6, dtype=torch.float64):
        super().__init__()
        self.num_classes = num_classes
        self.lin = torch.nn.Linear(dim + 1 + num_classes, dim, dtype=dtype)

    def forward(self, x_t, t, cond):
        b = x_t.shape[0]
        onehot = torch.zeros(b, self.num_classes, dtype=x_t.dtype)
        if cond is not None:
            onehot = torch.nn.functional.one_hot(cond, self.num_classes).to(x_t.dtype)
        h = torch.cat([x_t.reshape(b, -1), t.to(x_t.dtype)[:, None] / 1000, onehot], dim=1)  # (B, D + 1 + K)
        return self.lin(h).reshape(x_t.shape)


def _batch(n=16, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, dim, generator=g, dtype=torch.float64) * 2 - 1
    cond = torch.randint(0, 4, (n,), generator=g)
    return x0, cond


# --------------------------------------------------------------------------------------------------
# Losses


def test_distillation_zero_when_student_is_teacher():
    torch.manual_seed(0)
    sched = diffusion.Schedule()
    student = TinyDenoiser()
    teacher = replay.frozen_copy(student)
    loss = replay.distillation_loss(student, teacher, sched, _batch(), torch.Generator().manual_seed(1))
    assert loss.shape == (16,)
    assert torch.all(loss == 0)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_distillation_gradient_matches_closed_form():
    """For a linear student eps_hat = W h + b: d/dW mean_i mean_d (W h_i + b - e_i)^2 = 2/(B D) sum_i r_i h_i^T."""
    torch.manual_seed(0)
    sched = diffusion.Schedule()
    student, teacher = TinyDenoiser(), TinyDenoiser()
    x0, cond = _batch()
    t, eps = diffusion.draw_noise(sched, x0, torch.Generator().manual_seed(2))
    loss = replay.distillation_loss(student, teacher, sched, (x0, cond, t, eps)).mean()
    loss.backward()

    x_t = diffusion.q_sample(sched, x0, t, eps)
    h = torch.cat([x_t, t.double()[:, None] / 1000, torch.nn.functional.one_hot(cond, 6).double()], 1)
    with torch.no_grad():
        resid = student(x_t, t, cond) - teacher(x_t, t, cond)  # (B, D)
    b, d = resid.shape
    torch.testing.assert_close(student.lin.weight.grad, 2 / (b * d) * resid.T @ h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(student.lin.bias.grad, 2 / (b * d) * resid.sum(0), rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in teacher.parameters())


def test_distillation_uses_same_noise_as_generative_replay():
    """With a teacher that predicts the true eps exactly, distillation equals plain generative replay."""
    sched = diffusion.Schedule()
    x0, cond = _batch()
    t, eps = diffusion.draw_noise(sched, x0, torch.Generator().manual_seed(3))

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t_, cond_):
            ab = sched.alpha_bar[t_].to(x_t.dtype)[:, None]
            return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # eps recovered from Eq. 2

    student = TinyDenoiser()
    batch = (x0, cond, t, eps)
    torch.testing.assert_close(replay.distillation_loss(student, Oracle(), sched, batch),
                               replay.generative_replay_loss(student, sched, batch))


def test_replay_loss_kinds_and_errors():
    sched = diffusion.Schedule()
    student = TinyDenoiser()
    batch = _batch()
    gen = replay.ReplayLoss("generative", sched)
    assert gen(student, batch, torch.Generator().manual_seed(0)).shape == (16,)
    distill = replay.ReplayLoss("distill", sched)
    with pytest.raises(ValueError, match="teacher"):
        distill(student, batch)
    distill.set_teacher(replay.frozen_copy(student))
    assert torch.all(distill(student, batch, torch.Generator().manual_seed(0)) == 0)
    with pytest.raises(ValueError, match="kind"):
        replay.ReplayLoss("mse", sched)


# --------------------------------------------------------------------------------------------------
# Pool


def _build(seed, n=10, tasks=(0, 1, 2)):
    torch.manual_seed(0)
    teacher = replay.frozen_copy(TinyDenoiser(dtype=torch.float32))
    pool = replay.ReplayPool()
    pool.rebuild(teacher, diffusion.Schedule(), tasks, replay.label_source(classes_per_task=2), n, (2,),
                 batch_size=4, steps=5, generator=torch.Generator().manual_seed(seed), progress=False)
    return pool


def test_pool_sizes_labels_and_determinism():
    pool = _build(seed=7)
    assert pool.task_ids == [0, 1, 2] and len(pool) == 30
    for k in pool.task_ids:
        assert pool.x0[k].shape == (10, 2)
        # balanced labels of task k: classes 2k and 2k + 1, five each
        assert torch.equal(torch.bincount(pool.cond[k], minlength=6)[2 * k: 2 * k + 2], torch.tensor([5, 5]))
        assert pool.x0[k].abs().max() <= 1
    same, other = _build(seed=7), _build(seed=8)
    for k in pool.task_ids:
        assert torch.equal(pool.x0[k], same.x0[k])
        assert not torch.equal(pool.x0[k], other.x0[k])


def test_pool_samples_evenly_over_tasks():
    pool = _build(seed=0)
    g = torch.Generator().manual_seed(0)
    x0, cond = pool.sample(12, g)
    assert x0.shape == (12, 2) and cond.shape == (12,)
    assert torch.equal(torch.bincount(cond // 2, minlength=3), torch.tensor([4, 4, 4]))
    # 13 = 3 * 4 + 1: each task gets 4 or 5; over many draws the extra slot is spread evenly
    totals = torch.zeros(3, dtype=torch.long)
    for _ in range(300):
        per_task = torch.bincount(pool.sample(13, g)[1] // 2, minlength=3)
        assert set(per_task.tolist()) <= {4, 5} and per_task.sum() == 13
        totals += per_task
    assert (totals - totals.float().mean()).abs().max() < 40  # 100 extras per task in expectation
    # same generator seed -> same batch
    a = pool.sample(12, torch.Generator().manual_seed(3))
    b = pool.sample(12, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_pool_state_dict_roundtrip_and_errors():
    pool = _build(seed=1, tasks=(0, 1))
    copy = replay.ReplayPool()
    copy.load_state_dict(pool.state_dict())
    assert copy.task_ids == [0, 1]
    assert all(torch.equal(pool.x0[k], copy.x0[k]) and torch.equal(pool.cond[k], copy.cond[k]) for k in (0, 1))
    with pytest.raises(ValueError, match="empty"):
        replay.ReplayPool().sample(4)
    with pytest.raises(ValueError, match="cond"):
        replay.ReplayPool().add(0, torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="mixing"):
        pool.add(5, torch.zeros(3, 2), None)


def test_pool_holds_policy_pairs_unconditional_and_conditional():
    """Policies: x0 = action sequences (n, S, D_a), cond = observation windows (n, O, D_o) from the caller."""
    pool = replay.ReplayPool()
    obs = torch.randn(6, 3, 5)  # (n, O, D_o)
    pool.add(0, torch.randn(6, 4, 2), obs)  # (n, S, D_a)
    x0, cond = pool.sample(4, torch.Generator().manual_seed(0))
    assert x0.shape == (4, 4, 2) and cond.shape == (4, 3, 5)
    uncond = replay.ReplayPool()
    uncond.add(0, torch.randn(6, 2), None)
    x0, cond = uncond.sample(4, torch.Generator().manual_seed(0))
    assert x0.shape == (4, 2) and cond is None


def test_pool_build_for_a_policy_with_caller_observations():
    """Policies: cond_source gives observation windows (n, O, D_o); the teacher generates actions (n, S, D_a)."""
    torch.manual_seed(0)
    teacher = replay.frozen_copy(unet.unet1d_tiny(obs_dim=5, obs_horizon=3, action_dim=2, horizon=8))
    seen = []

    def observations(task_id, n, generator=None):  # stands in for rollouts of the frozen policy in task task_id
        obs = torch.full((n, 3, 5), float(task_id)) + 0.01 * torch.arange(n)[:, None, None]
        seen.append((task_id, n))
        return obs

    pool = replay.ReplayPool()
    pool.rebuild(teacher, diffusion.Schedule(), [0, 1], observations, 5, (8, 2), batch_size=2, steps=3,
                 generator=torch.Generator().manual_seed(0), progress=False)
    assert seen == [(0, 5), (1, 5)]
    assert pool.x0[1].shape == (5, 8, 2) and pool.cond[1].shape == (5, 3, 5)
    assert torch.equal(pool.cond[1], observations(1, 5)) and pool.x0[1].abs().max() <= 1
    x0, cond = pool.sample(4, torch.Generator().manual_seed(0))
    assert x0.shape == (4, 8, 2) and torch.equal(cond[:, 0, 0].floor(), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_pool_draws_stored_pairs_uniformly_over_each_tasks_items():
    """Every drawn (x0, cond) is one stored pair (x0 and cond taken at the same index), each task's block holds
    that task's items only, and over many draws every stored item of every task comes up, each about equally often.
    Items of different sizes per task (5 and 7) encode their own task and index: x0 = (task, i), cond = 100 task + i.
    Catches: cond indexed with a second, independent draw (pairs broken), indices drawn below count (or below
    n - 1: the last item never replayed), the first `count` items taken every time, and one task's indices used
    for another task."""
    pool = replay.ReplayPool()
    for task, n in ((0, 5), (1, 7)):
        i = torch.arange(n)
        pool.add(task, torch.stack([torch.full((n,), float(task)), i.float()], 1), 100 * task + i)
    g = torch.Generator().manual_seed(0)
    hits = {0: torch.zeros(5, dtype=torch.long), 1: torch.zeros(7, dtype=torch.long)}
    for _ in range(400):
        x0, cond = pool.sample(6, g)
        assert torch.equal(cond, 100 * x0[:, 0].long() + x0[:, 1].long())       # stored pairs
        assert torch.equal(x0[:, 0], torch.tensor([0.0, 0, 0, 1, 1, 1]))          # task blocks, in task order
        for task in (0, 1):
            hits[task] += torch.bincount(x0[3 * task:3 * task + 3, 1].long(), minlength=len(hits[task]))
    for task, h in hits.items():
        expected = 1200 / len(h)
        assert h.min().item() > 0.75 * expected and h.max().item() < 1.25 * expected, (task, h)
