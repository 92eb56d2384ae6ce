"""Tests for unet.py: shapes over sizes, gradients reach every parameter, paper parameter counts, input checks,
and the three autodiff modes the rest of the code relies on (forward-mode JVP for the rank-1 Fisher, per-sample
vmap(grad) and double backward for the meta-learning baselines), each checked against a second computation."""
import pytest
import torch
from torch.func import functional_call, grad, jvp, vmap

import unet

# torch.func.jvp registers its decompositions through torch.jit.script, which torch 2.13 deprecates (not our code)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _labels(n: int, num_classes: int | None, gen: torch.Generator) -> torch.Tensor | None:
    return None if num_classes is None else torch.randint(0, num_classes, (n,), generator=gen)


def _steps(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1000, (n,), generator=gen)


# ------------------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("num_classes", [None, 7])
def test_unet2d_tiny_shape(size, num_classes):
    gen = torch.Generator().manual_seed(size)
    model = unet.unet2d_tiny(num_classes=num_classes)
    x = torch.randn(3, 3, size, size, generator=gen)
    out = model(x, _steps(3, gen), _labels(3, num_classes, gen))
    assert out.shape == x.shape


@pytest.mark.parametrize("hw", [(8, 8), (16, 8), (8, 16)])
def test_unet2d_three_levels_attention_first_and_last(hw):
    """A 3-level, 2-block net with attention at levels 0 and 2, one input channel, non-square images."""
    gen = torch.Generator().manual_seed(0)
    model = unet.UNet2D(1, (8, 16, 16), layers_per_block=2, attention_levels=(0, 2), num_classes=4, norm_groups=4)
    x = torch.randn(2, 1, *hw, generator=gen)
    assert model(x, _steps(2, gen), _labels(2, 4, gen)).shape == x.shape


def test_unet2d_small_shape():
    gen = torch.Generator().manual_seed(1)
    model = unet.unet2d_small(num_classes=10)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    assert model(x, _steps(2, gen), _labels(2, 10, gen)).shape == x.shape


@pytest.mark.parametrize("horizon", [4, 8, 16])
@pytest.mark.parametrize("obs_horizon", [1, 2, 6])
def test_unet1d_tiny_shape(horizon, obs_horizon):
    gen = torch.Generator().manual_seed(horizon + obs_horizon)
    model = unet.unet1d_tiny(obs_dim=5, obs_horizon=obs_horizon, action_dim=3, horizon=horizon)
    x = torch.randn(4, horizon, 3, generator=gen)
    obs = torch.randn(4, obs_horizon, 5, generator=gen)
    assert model(x, _steps(4, gen), obs).shape == x.shape


@pytest.mark.parametrize("horizon", [2, 6])
def test_unet1d_two_levels_attention_first_level(horizon):
    gen = torch.Generator().manual_seed(horizon)
    model = unet.ConditionalUNet1D(2, 3, 2, (8, 16), kernel_size=5, norm_groups=4, step_embed_dim=8,
                                   attention_levels=(0,), heads=2)
    x = torch.randn(3, horizon, 2, generator=gen)
    assert model(x, _steps(3, gen), torch.randn(3, 2, 3, generator=gen)).shape == x.shape


def test_unet1d_small_shape():
    gen = torch.Generator().manual_seed(2)
    model = unet.unet1d_small()
    x = torch.randn(2, 8, 4, generator=gen)
    assert model(x, _steps(2, gen), torch.randn(2, 6, 39, generator=gen)).shape == x.shape


def test_unet1d_compact_is_small_at_half_width():
    """unet1d_compact (the CW10 CPU presets' model) has small's layout with every width halved and the count its
    docstring states. Catches a factory that changed depth, attention or kernel instead of width only."""
    gen = torch.Generator().manual_seed(4)
    compact, small = unet.unet1d_compact(), unet.unet1d_small()
    assert unet.count_parameters(compact) == 1_677_476
    shapes_c = {n: p.shape for n, p in compact.named_parameters()}
    shapes_s = {n: p.shape for n, p in small.named_parameters()}
    assert shapes_c.keys() == shapes_s.keys()  # same modules: depth, attention placement, FiLM blocks
    def half(c):
        return c if c == 4 else c // 2  # 4 = the action dim (the input and output channels), not a width

    convs = [n for n, s in shapes_s.items() if len(s) == 3]  # Conv1d / ConvTranspose1d weights
    assert len(convs) > 30
    for name in convs:
        c_a, c_b, k = shapes_s[name]
        assert shapes_c[name] == (half(c_a), half(c_b), k), name  # both channel counts halve, kernel kept
    x = torch.randn(3, 8, 4, generator=gen)
    assert compact(x, _steps(3, gen), torch.randn(3, 6, 39, generator=gen)).shape == x.shape
    with pytest.raises(ValueError, match="horizon"):
        unet.unet1d_compact(horizon=10)


# ------------------------------------------------------------------------------------------------------------
# Gradients reach every parameter


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_every_parameter_gets_a_gradient(kind):
    gen = torch.Generator().manual_seed(3)
    if kind == "2d":
        model = unet.unet2d_tiny(num_classes=5)
        x, cond = torch.randn(4, 3, 16, 16, generator=gen), _labels(4, 5, gen)
    else:
        model = unet.unet1d_tiny()
        x, cond = torch.randn(4, 8, 4, generator=gen), torch.randn(4, 6, 39, generator=gen)
    model(x, _steps(4, gen), cond).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------------------
# Paper parameter counts (built on the meta device: no memory, well under a second)


def test_paper_parameter_counts():
    with torch.device("meta"):
        n2d = unet.count_parameters(unet.unet2d_paper(num_classes=500))
        n1d = unet.count_parameters(unet.unet1d_paper(obs_dim=39, obs_horizon=6, action_dim=4, horizon=8))
    assert abs(n2d - 37.45e6) / 37.45e6 < 0.05  # Table 6
    assert abs(n1d - 83.27e6) / 83.27e6 < 0.05  # Table 6
    # 38,639,107 is diffusers 0.42.1 UNet2DModel(block_out_channels=(128, 256, 256, 256), num_class_embeds=500)
    # with every other argument at its default (diffusers' unet_2d.py)
    assert (n2d, n1d) == (38_639_107, 83_264_772)


def test_small_and_tiny_2d_counts_unchanged():
    """unet2d_small / unet2d_tiny keep their layout (other modules and the README use them)."""
    with torch.device("meta"):
        assert unet.count_parameters(unet.unet2d_small()) == 1_002_883
        assert unet.count_parameters(unet.unet2d_tiny()) == 71_323


def test_unet2d_paper_attention_follows_diffusers_default_blocks():
    """diffusers UNet2DModel defaults: down (DownBlock2D, AttnDownBlock2D x 3), up (AttnUpBlock2D x 3, UpBlock2D),
    an attention per ResNet block in Attn blocks (2 down, 3 up), one in the mid block: 6 + 9 + 1 = 16.
    Catches: attention at one level only (DDPM CIFAR-10 layout, 6 layers) or in the first level, too."""
    with torch.device("meta"):
        model = unet.unet2d_paper()
        default = unet.UNet2D(3, (32, 64, 64), num_classes=None, norm_groups=8)  # attention_levels=None
    attn = lambda level: sum(isinstance(a, unet.Attention2D) for a in level.attns)
    assert [attn(level) for level in model.down] == [0, 2, 2, 2]
    assert [attn(level) for level in model.up] == [3, 3, 3, 0]          # deepest level first
    assert isinstance(model.mid_attn, unet.Attention2D)
    assert sum(isinstance(m, unet.Attention2D) for m in model.modules()) == 16
    assert [attn(level) for level in default.down] == [0, 2, 2]


def test_attention_layer_parameter_count():
    c = 64
    assert unet.count_parameters(unet.SelfAttention(c, 8, 8)) == 4 * c * c + 6 * c


def test_twelve_film_blocks_in_paper_1d():
    with torch.device("meta"):
        model = unet.unet1d_paper()
    assert sum(isinstance(m, unet.FiLMResBlock1D) for m in model.modules()) == 12  # paper C.2.1
    assert sum(isinstance(m, unet.SelfAttention) for m in model.modules()) == 3


# ------------------------------------------------------------------------------------------------------------
# Input checks: one-line ValueErrors


def test_bad_horizon_in_factory_and_forward():
    with pytest.raises(ValueError, match="horizon 6 is not divisible by 4"):
        unet.unet1d_paper(horizon=6)
    for factory in (unet.unet1d_small, unet.unet1d_tiny):
        with pytest.raises(ValueError, match="horizon"):
            factory(horizon=10)
    model = unet.unet1d_tiny()
    with pytest.raises(ValueError, match="horizon 6 is not divisible by 4"):
        model(torch.randn(2, 6, 4), torch.zeros(2, dtype=torch.long), torch.randn(2, 6, 39))


def test_bad_shapes_1d():
    model = unet.unet1d_tiny(obs_dim=39, obs_horizon=6, action_dim=4)
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="observations"):
        model(torch.randn(2, 8, 4), t, torch.randn(2, 5, 39))
    with pytest.raises(ValueError, match="observations"):
        model(torch.randn(2, 8, 4), t, torch.randn(2, 6, 38))
    with pytest.raises(ValueError, match="observations"):
        model(torch.randn(2, 8, 4), t, torch.randn(3, 6, 39))
    with pytest.raises(ValueError, match="actions"):
        model(torch.randn(2, 8, 3), t, torch.randn(2, 6, 39))


def test_bad_inputs_2d():
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="cond is None"):
        unet.unet2d_tiny(num_classes=3)(torch.randn(2, 3, 8, 8), t, None)
    with pytest.raises(ValueError, match="cond is given"):
        unet.unet2d_tiny()(torch.randn(2, 3, 8, 8), t, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="image height 6"):
        unet.unet2d_tiny()(torch.randn(2, 3, 6, 8), t, None)
    with pytest.raises(ValueError, match="image width 10"):
        unet.unet2d_tiny()(torch.randn(2, 3, 8, 10), t, None)
    with pytest.raises(ValueError, match="expected x"):
        unet.unet2d_tiny()(torch.randn(2, 1, 8, 8), t, None)


def test_bad_configs():
    with pytest.raises(ValueError, match="GroupNorm groups"):
        unet.UNet2D(3, (12, 24), norm_groups=8)
    with pytest.raises(ValueError, match="attention_levels"):
        unet.UNet2D(3, (8, 16), attention_levels=(2,), norm_groups=4)
    with pytest.raises(ValueError, match="GroupNorm groups"):
        unet.ConditionalUNet1D(4, 3, 2, (12, 24), norm_groups=8)
    with pytest.raises(ValueError, match="attention_levels"):
        unet.ConditionalUNet1D(4, 3, 2, (8, 16), norm_groups=4, attention_levels=(-1,))
    with pytest.raises(ValueError, match="heads"):
        unet.SelfAttention(12, 5, 4)
    with pytest.raises(ValueError, match="step embedding width"):
        unet.StepEmbedding(6 - 1, 8, 8, torch.nn.Mish, flip_sin_to_cos=False, freq_shift=1)


# ------------------------------------------------------------------------------------------------------------
# Autodiff modes, float64, each against an independent computation


def _tiny_case(kind: str, n: int = 2):
    """A float64 tiny model with a fixed batch: (model, x, t, cond)."""
    gen = torch.Generator().manual_seed(4)
    if kind == "2d":
        model = unet.unet2d_tiny(num_classes=5).double()
        x, cond = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64), _labels(n, 5, gen)
    else:
        model = unet.unet1d_tiny().double()
        x = torch.randn(n, 8, 4, generator=gen, dtype=torch.float64)
        cond = torch.randn(n, 6, 39, generator=gen, dtype=torch.float64)
    return model, x, _steps(n, gen), cond


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_jvp_matches_finite_difference(kind):
    model, x, t, cond = _tiny_case(kind)
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(5)
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}

    def f(p):
        return functional_call(model, p, (x, t, cond))  # (B, ...)

    _, tangent = jvp(f, (params,), (v,))
    h = 1e-6
    plus = f({k: params[k] + h * v[k] for k in params})
    minus = f({k: params[k] - h * v[k] for k in params})
    torch.testing.assert_close(tangent, (plus - minus) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_vmap_grad_matches_per_sample_loop(kind):
    model, x, t, cond = _tiny_case(kind)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, ti, ci):
        return functional_call(model, p, (xi[None], ti[None], ci[None])).square().mean()  # batch of one

    batched = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, t, cond)  # {name: (B, *shape)}
    for i in range(x.shape[0]):
        model.zero_grad()
        model(x[i:i + 1], t[i:i + 1], cond[i:i + 1]).square().mean().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(batched[name][i], p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_double_backward_hessian_vector_product(kind):
    """Hv by double backward (create_graph=True) equals the central difference of gradients."""
    model, x, t, cond = _tiny_case(kind)
    ps = list(model.parameters())
    gen = torch.Generator().manual_seed(6)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ps]

    def gradient():
        return torch.autograd.grad(model(x, t, cond).square().mean(), ps, create_graph=True)

    g = gradient()
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), ps)
    h = 1e-6  # central-difference error is O(h^2): ~5e-7 relative here, measured
    with torch.no_grad():
        for p, vi in zip(ps, v):
            p.add_(h * vi)
    g_plus = gradient()
    with torch.no_grad():
        for p, vi in zip(ps, v):
            p.sub_(2 * h * vi)
    g_minus = gradient()
    hv_flat = torch.cat([a.flatten() for a in hv])  # (P,)
    fd_flat = torch.cat([(gp - gm).flatten() / (2 * h) for gp, gm in zip(g_plus, g_minus)])  # (P,)
    assert (hv_flat - fd_flat).norm() / hv_flat.norm() < 1e-5


def test_sinusoidal_embedding_values():
    """Both step encodings at dim 8 (half = 4), frequencies written out by hand.
    Catches: swapping the two forms (sin/cos order or the frequency grid) between the networks."""
    t = torch.tensor([0, 1, 999])
    # Diffusion Policy (SinusoidalPosEmb): [sin, cos], w_k = 10000^(-k/3)
    w = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4], dtype=torch.float64)
    expected = torch.cat([torch.sin(t[:, None] * w), torch.cos(t[:, None] * w)], dim=-1)
    torch.testing.assert_close(unet.sinusoidal_embedding(t, 8, flip_sin_to_cos=False, freq_shift=1),
                               expected.float())
    # diffusers Timesteps(8, flip_sin_to_cos=True, downscale_freq_shift=0): [cos, sin], w_k = 10000^(-k/4)
    w = torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64)
    expected = torch.cat([torch.cos(t[:, None] * w), torch.sin(t[:, None] * w)], dim=-1)
    torch.testing.assert_close(unet.sinusoidal_embedding(t, 8, flip_sin_to_cos=True, freq_shift=0),
                               expected.float())


def test_each_network_uses_its_own_step_encoding():
    """The image UNet encodes t as diffusers' UNet2DModel does, the action UNet as Diffusion Policy does.
    Catches: both networks sharing one encoding."""
    t = torch.tensor([3, 500])
    two_d, one_d = unet.unet2d_tiny().time_embed, unet.unet1d_tiny().step_embed
    assert (two_d.flip_sin_to_cos, two_d.freq_shift) == (True, 0)
    assert (one_d.flip_sin_to_cos, one_d.freq_shift) == (False, 1)
    with torch.no_grad():
        expected = two_d.mlp(unet.sinusoidal_embedding(t, two_d.dim, True, 0))
    torch.testing.assert_close(two_d(t), expected)
