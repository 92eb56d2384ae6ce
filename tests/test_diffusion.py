"""Eq. (1)-(3) and DDIM, checked numerically on toy shapes."""
import math

import pytest
import torch

from diffusion import (Schedule, batch_loss, ddim_sample, ddim_timesteps, draw_noise, eps_loss,
                       q_sample, with_noise)


class TinyDenoiser(torch.nn.Module):
    """eps_hat = MLP([x_t, t/T, onehot(cond)]) for any (B, ...) shape; cond: labels or None."""

    def __init__(self, dim, num_classes=3, hidden=64):
        super().__init__()
        self.num_classes = num_classes
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1 + num_classes, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, dim))

    def forward(self, x, t, cond):
        B = x.shape[0]
        c = (torch.zeros(B, self.num_classes, dtype=x.dtype) if cond is None
             else torch.nn.functional.one_hot(cond, self.num_classes).to(x.dtype))
        h = torch.cat([x.flatten(1), (t.to(x.dtype) / 1000).unsqueeze(1), c], dim=1)
        return self.net(h).reshape(x.shape)


def test_schedule_values():
    s = Schedule()
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    ab = 1.0
    for i in range(1000):
        ab *= 1 - s.betas[i].item()
    assert s.alpha_bar[-1].item() == pytest.approx(ab, rel=1e-12)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (5, 8, 4), (3, 2)])
def test_q_sample_matches_eq2(shape):
    s = Schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    t, eps = draw_noise(s, x0, g)
    x_t = q_sample(s, x0, t, eps)
    for i in range(shape[0]):
        ab = math.prod(1 - s.betas[k].item() for k in range(t[i].item() + 1))  # Eq. (2) by hand
        ref = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
        torch.testing.assert_close(x_t[i], ref, rtol=1e-12, atol=1e-12)


def test_eps_loss_is_per_sample_and_reproducible():
    s = Schedule()
    model = TinyDenoiser(2 * 4)
    x0 = torch.randn(6, 2, 4)
    cond = torch.randint(0, 3, (6,))
    l1 = eps_loss(model, s, x0, cond, generator=torch.Generator().manual_seed(3))
    l2 = eps_loss(model, s, x0, cond, generator=torch.Generator().manual_seed(3))
    assert l1.shape == (6,)
    torch.testing.assert_close(l1, l2)
    noisy = with_noise(s, (x0, cond), torch.Generator().manual_seed(3))
    torch.testing.assert_close(batch_loss(model, s, noisy), l1)
    # a per-sample loss: sample i depends only on sample i
    torch.testing.assert_close(batch_loss(model, s, tuple(v[:2] for v in noisy)), l1[:2])
    with pytest.raises(ValueError, match="both t and eps"):
        eps_loss(model, s, x0, cond, t=noisy[2])
    with pytest.raises(ValueError, match="batch is"):
        batch_loss(model, s, (x0,))


def test_ddim_timesteps_leading():
    ts = ddim_timesteps(1000, 50)
    assert ts[0].item() == 980 and ts[-1].item() == 0 and len(ts) == 50
    assert torch.all(ts[:-1] - ts[1:] == 20)
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


def test_ddim_eta0_deterministic_and_clipped():
    s = Schedule()
    model = TinyDenoiser(3 * 4 * 4)
    cond = torch.tensor([0, 1, 2, 0])
    a = ddim_sample(model, s, (4, 3, 4, 4), cond, steps=10, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, s, (4, 3, 4, 4), cond, steps=10, generator=torch.Generator().manual_seed(1))
    c = ddim_sample(model, s, (4, 3, 4, 4), cond, steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.abs().max() <= 1.0 and c.abs().max() <= 1.0
    assert not torch.equal(a, c)


def test_ddim_recovers_a_point_mass():
    """If eps_hat is the exact noise for data concentrated at x*, DDIM (eta 0) returns x*."""
    s = Schedule()
    x_star = torch.tensor([[0.3, -0.5, 0.9]], dtype=torch.float64)

    def oracle(x, t, cond):
        ab = s.coef(s.alpha_bar, t, x)
        return (x - ab.sqrt() * x_star) / (1 - ab).sqrt()

    oracle.parameters = lambda: iter([x_star])
    out = ddim_sample(oracle, s, (5, 3), None, steps=50, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x_star.expand(5, 3), rtol=0, atol=1e-10)


def test_eps_loss_decreases_when_training():
    torch.manual_seed(0)
    s = Schedule()
    data = torch.tensor([[0.5, -0.5], [-0.5, 0.5]]).repeat(32, 1)  # (64, 2)
    cond = torch.tensor([0, 1]).repeat(32)
    model = TinyDenoiser(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    eval_batch = with_noise(s, (data, cond), torch.Generator().manual_seed(99))
    before = batch_loss(model, s, eval_batch).mean().item()
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        opt.zero_grad()
        batch_loss(model, s, (data, cond), g).mean().backward()
        opt.step()
    after = batch_loss(model, s, eval_batch).mean().item()
    assert after < 0.7 * before
