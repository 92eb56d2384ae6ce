"""Denoisers eps_theta(x_t, t, cond): a label-conditioned 2D UNet (images) and a 1D conditional UNet (actions).

Paper: Wang, Gupta, MacLellan (2026), Appendix C.1.1 (ImageNet-500 UNet, 37.45M parameters, Table 6) and
Appendix C.2.1 (CW10 diffusion policy, 83.27M parameters, Table 6). Both networks predict the noise eps of
Eq. (3) and are called the same way:

    eps_hat = model(x_t, t, cond)

    UNet2D             x_t (B, C, H, W) float, t (B,) long in [0, T-1], cond (B,) long class labels or None
    ConditionalUNet1D  x_t (B, S, D_a) float (time-major, as stored), t (B,) long, cond (B, O, D_o) observations

Notation: B batch, C channels, H x W image, S action horizon, D_a action dim, O observation horizon,
D_o observation dim, L sequence length seen by attention (H*W for images, S/2^k for actions), nh heads,
hd = C/nh head size, E = step-embedding width (dsed in Diffusion Policy).

Shared pieces (written once, used by both networks):
- `sinusoidal_embedding`: the Transformer positional encoding of the diffusion step t, in diffusers' form
  (cos first, w_k = 10000^(-k/half)) for the image UNet and Diffusion Policy's (sin first, 10000^(-k/(half-1)))
  for the action UNet.
- `StepEmbedding`: sinusoid -> Linear -> act -> Linear (SiLU for the image UNet, Mish for Diffusion Policy).
- `SelfAttention`: GroupNorm -> multi-head softmax(Q K^T / sqrt(hd)) V -> Linear, plus a residual, on (B, C, L).
  It is written with plain matmuls (no F.scaled_dot_product_attention) so that torch.func.jvp (rank-1 Fisher,
  forward mode), torch.func.vmap(torch.func.grad(.)) (per-sample gradients) and double backward
  (create_graph=True, MAML/VR-MCL second-order checks) all work.
The residual blocks are not shared: the image block is the pre-activation ResNet block of DDPM/diffusers
(GroupNorm -> SiLU -> conv, time embedding added) and the action block is Diffusion Policy's post-activation
FiLM block (conv -> GroupNorm -> Mish, then scale * h + bias). Merging them would need mode switches.

2D layout (diffusers UNet2DModel with its default block types, the library and the "default hyperparameters"
the paper names in C.1.1): conv_in; per level `layers_per_block` ResNet blocks (+ self-attention after each at
every level but the first: DownBlock2D, AttnDownBlock2D x 3) and a stride-2 conv downsample except at the last level;
mid = ResNet, attention, ResNet; up path with `layers_per_block + 1` ResNet blocks per level, each consuming one
skip tensor (concatenated on channels), nearest x2 + conv upsample except at the last level; GroupNorm -> SiLU
-> conv_out. The class embedding (nn.Embedding) is added to the time embedding. Attention heads have size 8
(diffusers' attention_head_dim), so 32 heads at 256 channels; dropout 0. Step encoding: diffusers' Timesteps
with flip_sin_to_cos=True, freq_shift=0, then Linear(128, 512) -> SiLU -> Linear(512, 512).

1D layout (Diffusion Policy, Chi et al. 2023, `ConditionalUnet1D`): global condition g = [step embedding ||
flattened observations] of size E + O*D_o; per down level two FiLM residual blocks (+ attention) and
Downsample1d except at the last level; mid two blocks (+ attention between them); up levels mirror the down
levels except the first (two blocks each, skip concatenation, ConvTranspose1d x2 upsample); final Conv1dBlock +
1x1 conv.
That is 6 + 2 + 4 = 12 FiLM residual blocks, as the paper states. As in Diffusion Policy, the up path has one
level fewer than the down path, so the first level's output (left on the skip list) is never concatenated back.

Parameter counts (python bench.py unet --counts-only; exact, with torch default layers):
    unet2d_paper(num_classes=500)  38,639,107   paper 37.45M  (+3.2%); diffusers 0.42.1 UNet2DModel with these
                                                channels and num_class_embeds=500: 38,639,107 (diffusers
                                                unet_2d.py defaults for everything else)
    unet1d_paper()                 83,264,772   paper 83.27M  (-0.01%)

Deviations from the paper:
- paper (C.1.1): "label-conditioned UNet from HuggingFace diffusers, default hyperparameters", 37.45M (Table 6);
  here: a hand-written copy of UNet2DModel's defaults (attention at levels 1-3 and in the mid block), which
  has 38.64M, +3.2%. We follow the text ("default hyperparameters") rather than the count, because no simple
  variant gives 37.45M: attention at level 1 only (DDPM's CIFAR-10 layout) gives 36,002,307 (-3.9%), at
  levels 1-2 37,320,707 (-0.35%); the paper names neither.
- paper (C.2.1): "8-head self-attention at U-Net levels 2 and 3 (the 512- and 1024-channel resolutions)",
  placement not given; here: one attention after the two residual blocks of down level 2 (512 channels) and of
  down level 3 (1024), and one between the two mid blocks (1024, like the image UNet's mid block). The third
  (mid-block) attention layer is not in the paper's text: it is kept because it matches the 83.27M count of
  Table 6 (83,264,772, 0.006% off). Other placements: down levels 2 and 3 only 79,064,324 (-5.1%); plus
  attention after each mid block 87,465,220 (+5.0%). (An attention layer costs 4C^2 + 6C: 1,051,648 at C=512,
  4,200,448 at C=1024; the network without attention has 73,812,228.)
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------------------------
# Shared helpers: step embedding, attention, parameter count


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def sinusoidal_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Transformer sinusoidal encoding of the diffusion step (Vaswani et al. 2017; Ho et al. 2020 Sec. 4).

    t (B,) long or float -> (B, dim) = [sin(t w_k), cos(t w_k)] ([cos, sin] if flip_sin_to_cos),
    w_k = 10000^(-k / (dim/2 - freq_shift)), k < dim/2 (the parameters are diffusers' Timesteps arguments).
    diffusers UNet2DModel default: flip_sin_to_cos=True, freq_shift=0. Diffusion Policy's SinusoidalPosEmb:
    sin first, w_k = 10000^(-k / (dim/2 - 1)), i.e. flip_sin_to_cos=False, freq_shift=1.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    w = torch.exp(-math.log(10000.0) * k / (half - freq_shift))  # (half,)
    arg = t.to(torch.float32)[:, None] * w[None, :]  # (B, half)
    parts = [arg.cos(), arg.sin()] if flip_sin_to_cos else [arg.sin(), arg.cos()]
    return torch.cat(parts, dim=-1)  # (B, dim)


class StepEmbedding(nn.Module):
    """sinusoid(t) -> Linear(dim, hidden) -> act -> Linear(hidden, out_dim).

    Image UNet: cos-first sinusoid without shift, 128 -> 512 -> 512 with SiLU (diffusers Timesteps +
    TimestepEmbedding); Diffusion Policy: sin-first sinusoid with shift 1, E -> 4E -> E with Mish (paper C.2.1:
    512 -> 2048 -> 512).
    """

    def __init__(self, dim: int, hidden: int, out_dim: int, act: type[nn.Module], flip_sin_to_cos: bool,
                 freq_shift: float):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"step embedding width must be even and >= 4, got {dim}")
        self.dim, self.flip_sin_to_cos, self.freq_shift = dim, flip_sin_to_cos, freq_shift
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), act(), nn.Linear(hidden, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) long -> (B, out_dim)."""
        emb = sinusoidal_embedding(t, self.dim, self.flip_sin_to_cos, self.freq_shift)  # (B, dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # in the weights' dtype


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over positions: x + W_o softmax(Q K^T / sqrt(hd)) V (Vaswani et al.).

    x (B, C, L) -> (B, C, L); Q, K, V are Linear maps of GroupNorm(x) taken per position.
    Parameters: 4 C^2 + 6 C (norm, fused qkv, output projection; the same count as diffusers' Attention).
    """

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide channels ({channels})")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, L) -> (B, C, L)."""
        B, C, L = x.shape
        nh, hd = self.heads, C // self.heads
        h = self.norm(x).transpose(1, 2)  # (B, L, C)
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # 3 x (B, L, C)
        q = q.reshape(B, L, nh, hd).transpose(1, 2)  # (B, nh, L, hd)
        k = k.reshape(B, L, nh, hd).transpose(1, 2)  # (B, nh, L, hd)
        v = v.reshape(B, L, nh, hd).transpose(1, 2)  # (B, nh, L, hd)
        att = torch.softmax((q / math.sqrt(hd)) @ k.transpose(-2, -1), dim=-1)  # (B, nh, L, L); scaling Q is cheaper
        y = (att @ v).transpose(1, 2).reshape(B, L, C)  # (B, nh, L, hd) -> (B, L, C)
        return x + self.proj(y).transpose(1, 2)  # (B, C, L)


def check_length(name: str, size: int, levels: int) -> None:
    """Each of the `levels - 1` downsamples halves `size`; the up path must land back on the skip sizes."""
    factor = 2 ** (levels - 1)
    if size % factor:
        raise ValueError(f"{name} {size} is not divisible by {factor} (2**(levels-1) for {levels} UNet levels)")


# --------------------------------------------------------------------------------------------------------------
# 2D UNet (images): diffusers UNet2DModel layout


class ResBlock2D(nn.Module):
    """Pre-activation ResNet block with an additive time embedding (DDPM; diffusers ResnetBlock2D).

    h = conv1(SiLU(GN(x))) + Linear(SiLU(emb)); out = shortcut(x) + conv2(dropout(SiLU(GN(h)))).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B, C_out, 1, 1) broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class Attention2D(SelfAttention):
    """SelfAttention over the H*W pixels of a feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        return super().forward(x.reshape(B, C, H * W)).reshape(B, C, H, W)  # (B, C, H*W) -> (B, C, H, W)


class Level2D(nn.Module):
    """One resolution of the 2D UNet: ResNet blocks, each optionally followed by attention, then a resampler."""

    def __init__(self, blocks: list[ResBlock2D], attns: list[nn.Module], resample: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)  # nn.Identity where the level has no attention
        self.resample = resample


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (diffusers Upsample2D, use_conv=True)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet2D(nn.Module):
    """Label-conditioned image denoiser eps_theta(x_t, t, y) (paper C.1.1; diffusers UNet2DModel layout).

    block_out_channels: channels per level; attention_levels: 0-based levels with self-attention after every
    ResNet block (level l works at resolution H / 2^l), None for diffusers' default (every level but the first:
    AttnDownBlock2D / AttnUpBlock2D there, DownBlock2D / UpBlock2D at level 0); the mid block always has one
    attention. num_classes=None builds an unconditional model (cond must then be None).
    """

    def __init__(self, in_channels: int = 3, block_out_channels: tuple[int, ...] = (128, 256, 256, 256),
                 layers_per_block: int = 2, attention_levels: tuple[int, ...] | None = None,
                 num_classes: int | None = None, norm_groups: int = 32, head_dim: int = 8, dropout: float = 0.0):
        super().__init__()
        if attention_levels is None:
            attention_levels = tuple(range(1, len(block_out_channels)))  # diffusers UNet2DModel default
        for c in block_out_channels:
            if c % norm_groups:
                raise ValueError(f"GroupNorm groups ({norm_groups}) must divide every channel count, not {c}")
        if any(not 0 <= lvl < len(block_out_channels) for lvl in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} outside 0..{len(block_out_channels) - 1}")
        chs, n = list(block_out_channels), len(block_out_channels)
        emb_dim = 4 * chs[0]  # diffusers: time_embed_dim = 4 * block_out_channels[0]
        self.in_channels, self.levels, self.num_classes = in_channels, n, num_classes

        def attn(c: int, on: bool) -> nn.Module:
            return Attention2D(c, c // head_dim, norm_groups) if on else nn.Identity()

        def block(ci: int, co: int) -> ResBlock2D:
            return ResBlock2D(ci, co, emb_dim, norm_groups, dropout)

        # diffusers UNet2DModel: Timesteps(C0, flip_sin_to_cos=True, freq_shift=0) -> TimestepEmbedding(C0, 4 C0)
        self.time_embed = StepEmbedding(chs[0], emb_dim, emb_dim, nn.SiLU, flip_sin_to_cos=True, freq_shift=0)
        self.class_embed = nn.Embedding(num_classes, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)

        skips, c = [chs[0]], chs[0]  # channels of every tensor pushed on the skip stack
        self.down = nn.ModuleList()
        for lvl, co in enumerate(chs):
            blocks, attns = [], []
            for _ in range(layers_per_block):
                blocks.append(block(c, co))
                attns.append(attn(co, lvl in attention_levels))
                c = co
                skips.append(c)
            down = nn.Conv2d(c, c, 3, stride=2, padding=1) if lvl < n - 1 else nn.Identity()
            if lvl < n - 1:
                skips.append(c)  # the downsampled tensor is a skip too
            self.down.append(Level2D(blocks, attns, down))

        self.mid1, self.mid_attn, self.mid2 = block(c, c), attn(c, True), block(c, c)

        self.up = nn.ModuleList()
        for lvl in reversed(range(n)):
            blocks, attns = [], []
            for _ in range(layers_per_block + 1):
                blocks.append(block(c + skips.pop(), chs[lvl]))
                attns.append(attn(chs[lvl], lvl in attention_levels))
                c = chs[lvl]
            self.up.append(Level2D(blocks, attns, Upsample2D(c) if lvl > 0 else nn.Identity()))

        self.out = nn.Sequential(nn.GroupNorm(norm_groups, c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) float, t (B,) long, cond (B,) long labels or None -> eps_hat (B, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        check_length("image height", x.shape[2], self.levels)
        check_length("image width", x.shape[3], self.levels)
        if (cond is None) != (self.class_embed is None):
            raise ValueError(f"num_classes={self.num_classes} but cond is {'None' if cond is None else 'given'}")
        emb = self.time_embed(t)  # (B, E)
        if cond is not None:
            emb = emb + self.class_embed(cond)  # (B, E): class embedding added to the time embedding

        h = self.conv_in(x)  # (B, C0, H, W)
        hs = [h]
        for lvl, level in enumerate(self.down):
            for blk, att in zip(level.blocks, level.attns):
                h = att(blk(h, emb))  # (B, C_l, H/2^l, W/2^l)
                hs.append(h)
            if lvl < self.levels - 1:  # the last level keeps its resolution
                h = level.resample(h)  # (B, C_l, H/2^(l+1), W/2^(l+1))
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            for blk, att in zip(level.blocks, level.attns):
                h = att(blk(torch.cat([h, hs.pop()], dim=1), emb))  # cat: (B, C + C_skip, h, w)
            h = level.resample(h)  # (B, C_l, 2h, 2w), identity at the top level
        return self.out(h)  # (B, C, H, W)


# --------------------------------------------------------------------------------------------------------------
# 1D conditional UNet (actions): Diffusion Policy's ConditionalUnet1D with FiLM (Chi et al. 2023)


class Conv1dBlock(nn.Sequential):
    """Conv1d(k, padding k//2) -> GroupNorm -> Mish: (B, C_in, S) -> (B, C_out, S)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                         nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResBlock1D(nn.Module):
    """Diffusion Policy's ConditionalResidualBlock1D with FiLM (Perez et al. 2018) scale and bias.

    h = Conv1dBlock(x); (scale, bias) = Linear(Mish(g)); h = Conv1dBlock(scale * h + bias); out = h + res(x),
    res = 1x1 conv when C_in != C_out.
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, groups)
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, S), g (B, G) global condition -> (B, C_out, S)."""
        h = self.block1(x)  # (B, C_out, S)
        scale, bias = self.film(g)[:, :, None].chunk(2, dim=1)  # (B, 2 C_out, 1) -> 2 x (B, C_out, 1)
        h = self.block2(scale * h + bias)
        return h + self.residual(x)


class Level1D(nn.Module):
    """Two FiLM residual blocks, then attention (or identity), then a resampler (or identity)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, groups: int, attn: nn.Module,
                 resample: nn.Module):
        super().__init__()
        self.block1 = FiLMResBlock1D(c_in, c_out, cond_dim, kernel_size, groups)
        self.block2 = FiLMResBlock1D(c_out, c_out, cond_dim, kernel_size, groups)
        self.attn = attn
        self.resample = resample

    def features(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, S), g (B, G) -> (B, C_out, S), before resampling."""
        return self.attn(self.block2(self.block1(x, g), g))


class ConditionalUNet1D(nn.Module):
    """Observation-conditioned action denoiser eps_theta(a_t, t, o) (paper C.2.1; Diffusion Policy layout).

    down_dims: widths per level; attention_levels: 0-based levels whose down-path residual pair is followed by
    `heads`-head self-attention; if the last level is listed, one more sits between the two mid blocks.
    """

    def __init__(self, action_dim: int, obs_dim: int, obs_horizon: int,
                 down_dims: tuple[int, ...] = (256, 512, 1024), kernel_size: int = 5, norm_groups: int = 8,
                 step_embed_dim: int = 512, attention_levels: tuple[int, ...] = (1, 2), heads: int = 8):
        super().__init__()
        for c in down_dims:
            if c % norm_groups:
                raise ValueError(f"GroupNorm groups ({norm_groups}) must divide every width, not {c}")
        if any(not 0 <= lvl < len(down_dims) for lvl in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} outside 0..{len(down_dims) - 1}")
        self.action_dim, self.obs_dim, self.obs_horizon = action_dim, obs_dim, obs_horizon
        self.levels = n = len(down_dims)
        dims = [action_dim, *down_dims]
        cond_dim = step_embed_dim + obs_horizon * obs_dim  # G = E + O * D_o

        def attn(c: int, on: bool) -> nn.Module:
            return SelfAttention(c, heads, norm_groups) if on else nn.Identity()

        # paper C.2.1: sinusoid(E) -> Linear(E, 4E) -> Mish -> Linear(4E, E)
        self.step_embed = StepEmbedding(step_embed_dim, 4 * step_embed_dim, step_embed_dim, nn.Mish,
                                        flip_sin_to_cos=False, freq_shift=1)  # Diffusion Policy's SinusoidalPosEmb
        self.down = nn.ModuleList(
            Level1D(dims[lvl], dims[lvl + 1], cond_dim, kernel_size, norm_groups,
                    attn(dims[lvl + 1], lvl in attention_levels),
                    nn.Conv1d(dims[lvl + 1], dims[lvl + 1], 3, stride=2, padding=1) if lvl < n - 1 else nn.Identity())
            for lvl in range(n))
        c_mid, mid_attn = dims[-1], (n - 1) in attention_levels
        self.mid1 = FiLMResBlock1D(c_mid, c_mid, cond_dim, kernel_size, norm_groups)
        self.mid_attn = attn(c_mid, mid_attn)
        self.mid2 = FiLMResBlock1D(c_mid, c_mid, cond_dim, kernel_size, norm_groups)
        # up level at down-level index lvl = n-1 .. 1: input = previous output (width dims[lvl+1]) || skip of
        # level lvl (same width), output width dims[lvl], then ConvTranspose1d x2 back to level lvl-1's length
        self.up = nn.ModuleList(
            Level1D(2 * dims[lvl + 1], dims[lvl], cond_dim, kernel_size, norm_groups, nn.Identity(),
                    nn.ConvTranspose1d(dims[lvl], dims[lvl], 4, stride=2, padding=1))
            for lvl in reversed(range(1, n)))
        self.final = nn.Sequential(Conv1dBlock(dims[1], dims[1], kernel_size, norm_groups),
                                   nn.Conv1d(dims[1], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, S, D_a) noisy actions, t (B,) long, cond (B, O, D_o) observations -> eps_hat (B, S, D_a)."""
        if x.dim() != 3 or x.shape[2] != self.action_dim:
            raise ValueError(f"expected actions of shape (B, S, {self.action_dim}), got {tuple(x.shape)}")
        check_length("horizon", x.shape[1], self.levels)
        if cond.shape[1:] != (self.obs_horizon, self.obs_dim) or cond.shape[0] != x.shape[0]:
            raise ValueError(f"expected observations of shape ({x.shape[0]}, {self.obs_horizon}, {self.obs_dim}), "
                             f"got {tuple(cond.shape)}")
        g = torch.cat([self.step_embed(t), cond.flatten(1)], dim=-1)  # (B, E + O*D_o)
        h = x.transpose(1, 2)  # (B, D_a, S): channel-first for Conv1d
        skips = []
        for level in self.down:
            h = level.features(h, g)  # (B, C_l, S / 2^l)
            skips.append(h)
            h = level.resample(h)  # (B, C_l, S / 2^(l+1)), identity at the last level
        h = self.mid2(self.mid_attn(self.mid1(h, g)), g)  # (B, C_last, S / 2^(n-1))
        for level in self.up:
            h = level.features(torch.cat([h, skips.pop()], dim=1), g)  # cat: (B, 2 C_{l}, .) -> (B, C_{l-1}, .)
            h = level.resample(h)  # (B, C_{l-1}, 2 x length)
        return self.final(h).transpose(1, 2)  # (B, D_a, S) -> (B, S, D_a)


# --------------------------------------------------------------------------------------------------------------
# Factories: the paper's configurations and small ones for CPU runs and tests


def unet2d_paper(num_classes: int | None = 500, in_channels: int = 3) -> UNet2D:
    """Paper C.1.1 / Table 6 image UNet: diffusers UNet2DModel defaults with channels (128, 256, 256, 256):
    2 blocks per level, attention at levels 1-3 (16x16, 8x8, 4x4 for 32x32 inputs) and in the mid block,
    GroupNorm 32, dropout 0, cos-first step sinusoid. 38,639,107 parameters with 500 classes (paper: 37.45M)."""
    return UNet2D(in_channels, (128, 256, 256, 256), layers_per_block=2, attention_levels=(1, 2, 3),
                  num_classes=num_classes, norm_groups=32)


def unet2d_small(num_classes: int | None = None, in_channels: int = 3) -> UNet2D:
    """CPU-sized image UNet: channels (32, 64), 2 blocks per level, attention at level 1 (diffusers' default
    placement for two levels) and in the mid block, GroupNorm 8."""
    return UNet2D(in_channels, (32, 64), layers_per_block=2, attention_levels=(1,), num_classes=num_classes,
                  norm_groups=8)


def unet2d_tiny(num_classes: int | None = None, in_channels: int = 3) -> UNet2D:
    """Smoke-test image UNet: channels (8, 16, 16), 1 block per level, attention at level 2 only (8x8 for 32x32
    inputs, where it is cheap; diffusers' default would add level 1) and in the mid block, GroupNorm 4.
    Image sides must be multiples of 4."""
    return UNet2D(in_channels, (8, 16, 16), layers_per_block=1, attention_levels=(2,), num_classes=num_classes,
                  norm_groups=4)


def unet1d_paper(obs_dim: int = 39, obs_horizon: int = 6, action_dim: int = 4, horizon: int = 8) -> ConditionalUNet1D:
    """Paper C.2.1 / Table 6 diffusion policy: widths (256, 512, 1024), kernel 5, GroupNorm 8, step embedding 512,
    8-head attention after down levels 2 and 3 and in the mid block. 83,264,772 parameters (paper: 83.27M)."""
    check_length("horizon", horizon, 3)
    return ConditionalUNet1D(action_dim, obs_dim, obs_horizon, (256, 512, 1024), kernel_size=5, norm_groups=8,
                             step_embed_dim=512, attention_levels=(1, 2), heads=8)


def unet1d_small(obs_dim: int = 39, obs_horizon: int = 6, action_dim: int = 4, horizon: int = 8) -> ConditionalUNet1D:
    """CPU-sized diffusion policy: widths (64, 128, 256), kernel 5, GroupNorm 8, step embedding 64, 4 heads."""
    check_length("horizon", horizon, 3)
    return ConditionalUNet1D(action_dim, obs_dim, obs_horizon, (64, 128, 256), kernel_size=5, norm_groups=8,
                             step_embed_dim=64, attention_levels=(1, 2), heads=4)


def unet1d_tiny(obs_dim: int = 39, obs_horizon: int = 6, action_dim: int = 4, horizon: int = 8) -> ConditionalUNet1D:
    """Smoke-test diffusion policy: widths (8, 16, 32), kernel 3, GroupNorm 4, step embedding 16, 2 heads."""
    check_length("horizon", horizon, 3)
    return ConditionalUNet1D(action_dim, obs_dim, obs_horizon, (8, 16, 32), kernel_size=3, norm_groups=4,
                             step_embed_dim=16, attention_levels=(1, 2), heads=2)


def unet1d_compact(obs_dim: int = 39, obs_horizon: int = 6, action_dim: int = 4,
                   horizon: int = 8) -> ConditionalUNet1D:
    """unet1d_small at half the width for CW10 on a CPU: widths (32, 64, 128), kernel 5, GroupNorm 8, step
    embedding 64, 4 heads; 1,677,476 parameters with the CW10 shapes (small: 5,521,412). Same depth and layout,
    so the two differ only in width (results/cw10_single_task_cpu: about half the step time at batch 32)."""
    check_length("horizon", horizon, 3)
    return ConditionalUNet1D(action_dim, obs_dim, obs_horizon, (32, 64, 128), kernel_size=5, norm_groups=8,
                             step_embed_dim=64, attention_levels=(1, 2), heads=4)


def unet2d_mini(num_classes: int | None = None, in_channels: int = 3) -> UNet2D:
    """unet2d_tiny at double the width for the image CPU presets: channels (16, 32, 32), 1 block per level,
    attention at level 2 and in the mid block, GroupNorm 8; 283,955 parameters with 50 classes (tiny: 72,923).
    Image sides must be multiples of 4. The image `small` preset's model (results/imagenet_curves_cpu/)."""
    return UNet2D(in_channels, (16, 32, 32), layers_per_block=1, attention_levels=(2,), num_classes=num_classes,
                  norm_groups=8)
