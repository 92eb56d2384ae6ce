"""Tests for learners.py: each method's learner by name (with named arguments), and the weight average (--ema)."""
import copy

import pytest
import torch

import learners
from test_meta_baselines import MLP, _batch, mse_loss


# --------------------------------------------------------------------------------------------------
# By name


def test_make_learner_by_name():
    """make_learner builds each method's learner with the Eq. (3) loss and its replay loss.
    Catches: tr built without replay (beta silently 0), ftml/vrmcl given distillation instead of plain replay."""
    import diffusion
    import replay

    sched = diffusion.Schedule()
    cfg = dict(lr=1e-3, lam=5.0, beta=1.0, inner_lr=1e-4, vr_momentum=0.3, second_order=False)
    kinds = {}
    for method in learners.METHODS:
        model = MLP()
        learner = learners.make_learner(method, model, sched, **cfg)
        rl = learner.replay_loss_fn
        assert (rl.kind if rl else None) == learners.replay_kind(method)
        if rl is not None:
            rl.set_teacher(replay.frozen_copy(model))
        logs = learner.step(_batch(), _batch(seed=9) if learners.uses_replay(method) else None)
        assert torch.is_tensor(logs["loss"]) and logs["loss"].dim() == 0
        assert ("loss_replay" in logs) == learners.uses_replay(method)
        learner.load_state_dict(learner.state_dict())
        kinds[method] = type(learner).__name__
    assert kinds["ftml"] == "FTMLLearner" and kinds["vrmcl"] == "VRMCLLearner"
    make = learners.make_learner
    assert make("tr", MLP(), sched, **cfg).lam == 5.0 and make("replay", MLP(), sched, **cfg).lam == 0
    assert make("vrmcl", MLP(), sched, **cfg).r == 0.3
    assert make("vrmcl", MLP(), sched).r == 0.15
    with pytest.raises(TypeError):  # a misspelt argument fails loudly, it does not become a default
        make("tr", MLP(), sched, lamda=5.0)
    assert [m for m in learners.METHODS if learners.uses_fisher(m)] == ["ewc", "tr"]
    assert [m for m in learners.METHODS if learners.uses_replay(m)] == ["replay", "tr", "ftml", "vrmcl"]
    assert [learners.replay_kind(m) for m in learners.METHODS] == [None, None, "distill", "distill", "generative",
                                                                   "generative"]
    with pytest.raises(ValueError, match="unknown method"):
        make("maml", MLP(), sched, **cfg)


# --------------------------------------------------------------------------------------------------
# The weight average (--ema)


def _averaged_run(steps, decay=0.9, model=None, learner=None):
    """A finetune learner with a weight average, `steps` Adam steps; returns (model, learner, trained weights
    after each step)."""
    model = model or MLP()
    learner = learner or learners.make_learner("finetune", model, None, lr=1e-2, ema=decay)
    learner.learner.loss_fn = mse_loss  # the diffusion loss replaced by the deterministic test loss
    history = []
    for s in range(steps):
        learner.step(_batch(seed=s))
        history.append([p.detach().clone() for p in model.parameters()])
    return model, learner, history


def test_weight_average_is_the_ema_with_warmup_and_applies_exactly():
    """avg_n = d_n avg_{n-1} + (1 - d_n) theta_n with d_n = min(decay, (1 + n) / (10 + n)), avg_0 = theta_0:
    computed here in float64 from the recorded weights and compared to 1e-15. Catches the lerp weight swapped
    (d for 1 - d), a missing warm-up (d_n = decay from the start), and an average that misses a step. `applied`
    puts the average in the model and restores the trained weights bit for bit; `adopt` keeps it."""
    torch.manual_seed(0)
    model = MLP()
    expect = [p.detach().clone() for p in model.parameters()]
    model, learner, history = _averaged_run(10, decay=0.5, model=model)
    warm = [(1 + n) / (10 + n) for n in range(1, 11)]
    assert min(warm) < 0.5 < max(warm)  # both the warm-up (steps 1-7) and the cap (steps 9, 10) act
    for theta, w in zip(history, warm):
        d = min(0.5, w)
        expect = [d * a + (1 - d) * t for a, t in zip(expect, theta)]
    for a, e in zip(learner.avg, expect):
        assert torch.allclose(a, e, rtol=0, atol=1e-15)
    trained = [p.detach().clone() for p in model.parameters()]
    with learner.applied():
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), learner.avg))
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))
    assert not all(torch.equal(p, a) for p, a in zip(model.parameters(), learner.avg))
    learner.adopt()
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), learner.avg))


def test_weight_average_resumes_from_its_state_dict():
    """3 steps, state_dict, a fresh model and learner loaded from it, 3 more steps: the same average as 6 steps
    without a break (the step count n travels, so the warm-up continues where it stopped)."""
    torch.manual_seed(0)
    model, clean, _ = _averaged_run(6)
    torch.manual_seed(0)
    first, learner, _ = _averaged_run(3)
    sd = copy.deepcopy(learner.state_dict())
    second = MLP()
    second.load_state_dict(first.state_dict())
    resumed = learners.make_learner("finetune", second, None, lr=1e-2, ema=0.9)
    resumed.load_state_dict(sd)
    resumed.learner.loss_fn = mse_loss
    for s in range(3, 6):
        resumed.step(_batch(seed=s))
    assert resumed.n == clean.n == 6
    for a, b in zip(resumed.avg, clean.avg):
        assert torch.equal(a, b)
