"""Eq. (1)-(3) and DDIM, checked numerically on toy shapes."""
import math

import pytest
import torch

from diffusion import (DenoisingLoss, Schedule, ddim_sample, ddim_timesteps, draw_noise,
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
    l1 = DenoisingLoss(s)(model, (x0, cond), torch.Generator().manual_seed(3))
    l2 = DenoisingLoss(s)(model, (x0, cond), torch.Generator().manual_seed(3))
    assert l1.shape == (6,)
    torch.testing.assert_close(l1, l2)
    noisy = with_noise(s, (x0, cond), torch.Generator().manual_seed(3))
    torch.testing.assert_close(DenoisingLoss(s)(model, noisy), l1)
    # a per-sample loss: sample i depends only on sample i
    torch.testing.assert_close(DenoisingLoss(s)(model, tuple(v[:2] for v in noisy)), l1[:2])
    for partial in ((x0,), (x0, cond, noisy[2])):  # t without eps, or a lone x0
        with pytest.raises(ValueError, match="batch is"):
            DenoisingLoss(s)(model, partial)


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
    before = DenoisingLoss(s)(model, eval_batch).mean().item()
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        opt.zero_grad()
        DenoisingLoss(s)(model, (data, cond), g).mean().backward()
        opt.step()
    after = DenoisingLoss(s)(model, eval_batch).mean().item()
    assert after < 0.7 * before


# -----------------------------------------------------------------------------
# DDIM against a closed form: Gaussian data x0 ~ N(m, s^2), independent per coordinate

GAUSS_M, GAUSS_S = 0.2, 0.15  # x0 stays inside [-1, 1] (|x0 - m| < 5 s), so clipping is inactive


def gaussian_oracle(sched, m, s):
    """The optimal eps-predictor for x0 ~ N(m, s^2): E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) m) / v_t,
    v_t = ab s^2 + 1 - ab = Var[x_t] (Eq. 2 with Gaussian x0 and eps)."""

    def eps_star(x, t, cond):
        ab = sched.coef(sched.alpha_bar, t, x)
        return (1 - ab).sqrt() * (x - ab.sqrt() * m) / (ab * s * s + 1 - ab)

    eps_star.parameters = lambda: iter([torch.zeros(1, dtype=torch.float64)])
    return eps_star


def ddim_gaussian_gain(alpha_bar, ts, s):
    """Closed form of DDIM (eta 0) with the optimal predictor: each step maps x_t - sqrt(ab_t) m to
    k_t (x_t - sqrt(ab_t) m) with k_t = (sqrt(ab_prev ab_t) s^2 + sqrt((1 - ab_prev)(1 - ab_t))) / v_t, since
    x0_hat - m = sqrt(ab_t) s^2 z_t and eps_hat = sqrt(1 - ab_t) z_t with z_t = (x_t - sqrt(ab_t) m) / v_t.
    Returns prod_t k_t: x0 = m + prod_t k_t (x_T - sqrt(ab_T) m). Plain Python floats."""
    gain = 1.0
    for i, t in enumerate(ts):
        ab = alpha_bar[t]
        ab_prev = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        gain *= (math.sqrt(ab_prev * ab) * s * s + math.sqrt((1 - ab_prev) * (1 - ab))) / (ab * s * s + 1 - ab)
    return gain


@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_matches_gaussian_closed_form(steps):
    """DDIM (eta 0) with the exact eps-predictor of Gaussian data equals the step-by-step closed form.

    The timesteps (980, 960, ..., 0 for 50 steps) and alpha_bar values are written independently of
    diffusion.py. Catches: an off-by-one in DDIM's alpha_bar index (alpha_bar[t - ratio + 1] or
    alpha_bar[t - 1] instead of alpha_bar[t - ratio] / alpha_bar[t]), which the point-mass test misses
    because a point mass is recovered exactly whatever x_t the last step sees (measured: the ab_prev
    off-by-one scales x0 - m by 1.125 at 50 steps, against a 1e-12 tolerance here). Clipping is inactive
    here; the next test covers it."""
    s = Schedule()
    m, sd = GAUSS_M, GAUSS_S
    ab_list = []
    prod = 1.0
    for k in range(1000):
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * k / 999)    # linear betas 1e-4 .. 0.02, Eq. (1)
        ab_list.append(prod)
    ts = [t * (1000 // steps) for t in range(steps - 1, -1, -1)]  # "leading" spacing, descending
    gain = ddim_gaussian_gain(ab_list, ts, sd)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(64, 3, generator=g, dtype=torch.float64)
    out = ddim_sample(gaussian_oracle(s, m, sd), s, (64, 3), None, steps=steps, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
    expected = m + gain * (x_T - math.sqrt(ab_list[ts[0]]) * m)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # the continuous-time DDIM ODE maps x_T to m + s (x_T - sqrt(ab_T) m) / sqrt(v_T) exactly; DDIM is its
    # Euler discretisation (Song et al. 2021a, Sec. 4.3), so the closed form's gap to it halves as the step
    # count doubles (measured -1.8% at 500 steps, -1.0% at 1000): the closed form is not a copy of the sampler
    gaps = []
    for n in (500, 1000):
        ts_n = [t * (1000 // n) for t in range(n - 1, -1, -1)]
        v_T = ab_list[ts_n[0]] * sd * sd + 1 - ab_list[ts_n[0]]
        gaps.append(ddim_gaussian_gain(ab_list, ts_n, sd) / (sd / math.sqrt(v_T)) - 1)
    assert abs(gaps[1]) < 0.02 and 1.6 < gaps[0] / gaps[1] < 2.2

# -----------------------------------------------------------------------------
# the x0 ("sample") prediction type


def test_schedule_rejects_an_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction must be one of"):
        Schedule(prediction="x0")


def test_x0_loss_is_the_snr_weighted_eps_loss():
    """For the same x_t, an x0-predictor f and the eps-predictor it implies, g = (x_t - sqrt(ab) f) / sqrt(1 - ab),
    have ||eps - g||^2 = SNR(t) ||x0 - f||^2 with SNR = ab / (1 - ab) (diffusion.py's docstring), in float64 over t
    from 0 to 999. Also checks the x0 loss against ||x0 - f(x_t)||^2 / dim written out.
    Catches: the sample form keeping eps as its target, or comparing f with x_t instead of x0; an x0 loss that is
    not a mean over the non-batch dimensions."""
    s_eps, s_x0 = Schedule(), Schedule(prediction="sample")
    torch.manual_seed(0)
    f = TinyDenoiser(2 * 4).double()

    def g(x_t, t, cond):  # the eps-predictor implied by f, Eq. (2) solved for eps
        ab = s_eps.coef(s_eps.alpha_bar, t, x_t)
        return (x_t - ab.sqrt() * f(x_t, t, cond)) / (1 - ab).sqrt()

    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(7, 2, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(7, 2, 4, generator=gen, dtype=torch.float64)
    cond = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    t = torch.tensor([0, 1, 50, 300, 600, 900, 999])
    l_x0 = DenoisingLoss(s_x0)(f, (x0, cond, t, eps))
    l_eps = DenoisingLoss(s_eps)(g, (x0, cond, t, eps))
    ab = s_eps.alpha_bar[t]
    torch.testing.assert_close(l_eps, ab / (1 - ab) * l_x0, rtol=1e-10, atol=0)
    x_t = ab.sqrt().reshape(-1, 1, 1) * x0 + (1 - ab).sqrt().reshape(-1, 1, 1) * eps   # Eq. (2) by hand
    by_hand = ((x0 - f(x_t, t, cond)) ** 2).sum(dim=(1, 2)) / 8
    torch.testing.assert_close(l_x0, by_hand, rtol=1e-12, atol=0)


def gaussian_x0_oracle(sched, m, s):
    """The optimal x0-predictor for x0 ~ N(m, s^2): E[x0 | x_t] = m + sqrt(ab) s^2 (x_t - sqrt(ab) m) / v_t, the
    same posterior as gaussian_oracle's eps_star, written for the other unknown."""

    def x0_star(x, t, cond):
        ab = sched.coef(sched.alpha_bar, t, x)
        return m + ab.sqrt() * s * s * (x - ab.sqrt() * m) / (ab * s * s + 1 - ab)

    x0_star.parameters = lambda: iter([torch.zeros(1, dtype=torch.float64)])
    return x0_star


@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_with_the_exact_x0_predictor_equals_the_eps_one(steps):
    """DDIM (eta 0) with the exact x0-predictor of Gaussian data gives the samples DDIM gives with the exact
    eps-predictor (checked against the closed form above), and an x0-oracle of a point mass returns it exactly.
    Catches: eps_hat recomputed from x0_hat with sqrt(ab) and sqrt(1 - ab) swapped or without the division, the
    x0 output used as eps_hat (a schedule whose prediction type DDIM ignores)."""
    m, sd = GAUSS_M, GAUSS_S
    s_eps, s_x0 = Schedule(), Schedule(prediction="sample")
    kw = dict(steps=steps, dtype=torch.float64)
    ref = ddim_sample(gaussian_oracle(s_eps, m, sd), s_eps, (64, 3), None,
                      generator=torch.Generator().manual_seed(0), **kw)
    out = ddim_sample(gaussian_x0_oracle(s_x0, m, sd), s_x0, (64, 3), None,
                      generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    x_star = torch.tensor([[0.3, -0.5, 0.9]], dtype=torch.float64)

    def point_mass(x, t, cond):
        return x_star.expand_as(x)

    point_mass.parameters = lambda: iter([x_star])
    out = ddim_sample(point_mass, s_x0, (5, 3), None, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(out, x_star.expand(5, 3), rtol=0, atol=1e-12)


def test_ddim_sample_prediction_clips_x0_but_takes_eps_from_the_unclipped_one():
    """One DDIM step with an x0-predictor as diffusers' DDIMScheduler.step (prediction_type="sample", defaults):
    eps_hat = (x_t - sqrt(ab) x0_hat) / sqrt(1 - ab) from the network's x0_hat, then x0_hat is clipped to [-1, 1].
    The "network" x0_hat = 3 x_t leaves [-1, 1]. Catches: eps_hat computed from the clipped x0_hat, a missing clip."""
    s = Schedule(prediction="sample")

    def model(x, t, cond):
        return 3.0 * x

    model.parameters = lambda: iter([torch.zeros(1, dtype=torch.float64)])
    out = ddim_sample(model, s, (256, 2), None, steps=5, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(1))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = [800, 600, 400, 200, 0]
    for i, t in enumerate(ts):
        ab = s.alpha_bar[t].item()
        ab_prev = s.alpha_bar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        x0 = model(x, None, None)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        x = math.sqrt(ab_prev) * x0.clamp(-1, 1) + math.sqrt(1 - ab_prev) * eps
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


def test_ddim_clips_x0_but_keeps_the_network_eps():
    """One DDIM step as diffusers' DDIMScheduler.step with its defaults (clip_sample=True,
    use_clipped_model_output=False): x_prev = sqrt(ab_prev) clip(x0_hat) + sqrt(1 - ab_prev) eps_hat, with
    eps_hat the network's. The "network" eps_hat = 0.5 x_t under-predicts the noise, so x0_hat leaves
    [-1, 1] at the early steps, where the direction term still matters.
    Catches: recomputing eps_hat from the clipped x0_hat (the non-default option; it moves the samples by
    0.13 on average here), and a missing clip."""
    s = Schedule()

    def model(x, t, cond):
        return 0.5 * x

    model.parameters = lambda: iter([torch.zeros(1, dtype=torch.float64)])
    out = ddim_sample(model, s, (256, 2), None, steps=5, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(1))
    ts = [800, 600, 400, 200, 0]
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = {}
    for recompute in (False, True):
        x = x_T
        for i, t in enumerate(ts):
            ab = s.alpha_bar[t].item()
            ab_prev = s.alpha_bar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
            eps = model(x, None, None)
            x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
            if recompute:
                eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
        ref[recompute] = x
    torch.testing.assert_close(out, ref[False], rtol=0, atol=1e-12)
    assert (ref[True] - ref[False]).abs().mean() > 0.1       # the two options differ measurably here


# -----------------------------------------------------------------------------
# the noise draw of the training loss, and the epsilon loss written out


def test_draw_noise_trains_every_step_uniformly():
    """t ~ U{0..T-1}: in 200,000 draws every step 0..999 occurs, each about 200 times, and eps ~ N(0, I).
    Catches: randint(1, T) (t = 0, the step that decides the final sample, never trained), randint(0, T - 1)
    (t = 999, the step DDIM starts from, never trained), t drawn once for the whole batch, and eps drawn
    with rand (uniform on [0, 1)) instead of randn."""
    s = Schedule()
    x0 = torch.zeros(200_000, 2, dtype=torch.float64)
    t, eps = draw_noise(s, x0, torch.Generator().manual_seed(0))
    assert t.shape == (200_000,) and t.dtype == torch.long and eps.shape == x0.shape and eps.dtype == x0.dtype
    counts = torch.bincount(t, minlength=1000)
    assert counts.numel() == 1000 and counts.min().item() >= 130 and counts.max().item() <= 270  # 200 +- 5 s.d.
    assert abs(t.double().mean().item() - 499.5) < 3.0
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1.0) < 0.01
    a, b = (draw_noise(s, x0[:8], torch.Generator().manual_seed(1)) for _ in range(2))   # from the generator
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eps_loss_equals_eq3_written_out():
    """The epsilon loss of a pre-noised batch is mean_d (eps - model(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t, c))^2
    (Eq. 2-3, mean over the non-batch dimensions), written out in float64 with alpha_bar by hand.
    Catches: a sum over dimensions instead of the mean (the paper's lambda values are for the mean form), x0 or
    eps handed to the network instead of x_t, t shifted by one, and x0 as the target of the epsilon form."""
    s = Schedule()
    torch.manual_seed(1)
    model = TinyDenoiser(3 * 2).double()
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(5, 3, 2, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    cond = torch.tensor([0, 1, 2, 1, 0])
    t = torch.tensor([0, 1, 250, 700, 999])
    loss = DenoisingLoss(s)(model, (x0, cond, t, eps))
    for i in range(5):
        ab = math.prod(1 - (1e-4 + (0.02 - 1e-4) * k / 999) for k in range(t[i].item() + 1))
        x_t = math.sqrt(ab) * x0[i:i + 1] + math.sqrt(1 - ab) * eps[i:i + 1]
        ref = ((eps[i:i + 1] - model(x_t, t[i:i + 1], cond[i:i + 1])) ** 2).sum().item() / 6
        assert abs(loss[i].item() - ref) <= 1e-12 * ref


def test_ddim_with_eta_one_follows_eq16_step_by_step():
    """DDIM with eta = 1 written out: sigma_t = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)
    (DDIM Eq. 16), x_prev = sqrt(ab_prev) clip(x0_hat) + sqrt(1 - ab_prev - sigma_t^2) eps_hat + sigma_t z, with
    x_T and then one z per step drawn from the sampler's generator, in float64.
    Catches: sigma_t not squared under the square root of the direction term, a sigma_t without its first factor,
    and noise added at eta = 0's steps only (the eta = 0 tests cannot see sigma_t)."""
    s = Schedule()

    def model(x, t, cond):
        return 0.3 * x + 0.1

    model.parameters = lambda: iter([torch.zeros(1, dtype=torch.float64)])
    out = ddim_sample(model, s, (64, 2), None, steps=5, eta=1.0, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    ts = [800, 600, 400, 200, 0]
    for i, t in enumerate(ts):
        ab = s.alpha_bar[t].item()
        ab_prev = s.alpha_bar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        eps = model(x, None, None)
        x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        sigma = math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma ** 2) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(64, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
