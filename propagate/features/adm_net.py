"""OpenAI's ADM UNet (guided-diffusion), implemented natively for reading features; no extractor logic here.

The network is the ablated diffusion model of Dhariwal & Nichol (2021) as released in ``openai/guided-diffusion``.
This module holds, in reading order: the architecture options (:class:`ADMArch`), the noise schedule
(:func:`q_sample_coefficients`), the layers, the UNet (:class:`ADMUNet`, whose forward stops after the output
block asked for), and checkpoint reading and writing.

Parameter names follow the released checkpoints exactly (``input_blocks.1.0.in_layers.2.weight`` ...), so the
official ``256x256_diffusion_uncond.pt`` loads with strict key and shape matching. The architecture options
default to that model's values; other values describe other (e.g. tiny test) checkpoints. A checkpoint written
by :func:`save_tiny_checkpoint` carries its options in a side-car ``<checkpoint>.json``, read automatically.

Layer layout of the 256x256 model (channel_mult 1,1,2,2,4,4, two res blocks per level): the output blocks come
in groups of three per level, coarsest first, and the last block of each group (but the finest) upsamples by 2.
So output blocks 0-2 give 1024 channels at 1/32 (block 2 at 1/16 after its upsampling), 3-5 1024 at 1/16
(block 5 at 1/8), 6-8 512 at 1/8 (8 at 1/4), ... DIFT's DAVIS setting, block 7, is 512 channels at 1/8.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from propagate.errors import PropagateError
from propagate.io import atomic_path, atomic_write_json
from propagate.options import Rule, at_least, check_fields, option

CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
SIDECAR_SUFFIX = ".json"  # tiny.pt -> tiny.pt.json holds the architecture options of a saved checkpoint

# Channel multipliers the reference derives from image_size when none are given.
_DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


# --------------------------------------------------------------------------------------------------------------
# Architecture options
# --------------------------------------------------------------------------------------------------------------


ArchValue = int | float | str | bool | None  # the value of one ADMArch option, as JSON holds it


_HEADS = Rule(lambda v: v == -1 or v >= 1, "-1 (derived from num_heads) or an integer >= 1")


@dataclass(frozen=True)
class ADMArch:
    """The options that determine an ADM UNet's layers; defaults are those of ``256x256_diffusion_uncond.pt``.

    ``attention_resolutions`` are feature-map sizes relative to ``image_size`` (as in the reference's flags):
    "32,16,8" at image_size 256 means attention where the map is downsampled 8, 16 and 32 times.
    ``channel_mult`` None derives the multipliers from ``image_size`` like the reference does. Both may be given
    as a list (or one number), as YAML writes them; they are stored as the reference's "a,b,c" strings.
    """

    image_size: int = option(256, at_least(1))
    num_channels: int = option(256, at_least(1))
    num_res_blocks: int = option(2, at_least(1))
    channel_mult: str | float | Sequence[float] | None = None
    num_heads: int = option(4, at_least(1))
    num_head_channels: int = option(64, _HEADS)
    num_heads_upsample: int = option(-1, _HEADS)
    attention_resolutions: str | int | Sequence[int] = "32,16,8"
    dropout: float = option(0.0, at_least(0), Rule(lambda v: v < 1, "{type} < 1"))
    learn_sigma: bool = True
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    use_new_attention_order: bool = False
    class_cond: bool = False

    def __post_init__(self) -> None:
        for key in ("channel_mult", "attention_resolutions"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, key, ",".join(str(v) for v in value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                object.__setattr__(self, key, str(value))

    def to_dict(self) -> dict[str, ArchValue]:
        """Every architecture option (only :class:`ADMArch`'s own fields, also for a subclass)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ADMArch)}

    def describe(self) -> str:
        """``name=value`` pairs on one line, for error messages."""
        return ", ".join(f"{k}={v}" for k, v in self.to_dict().items())

    @classmethod
    def from_dict(cls, data: Mapping[str, object], source: str = "ADM options") -> ADMArch:
        """Checked options: unknown names and impossible layouts are one-line PropagateErrors naming ``source``."""
        names = {f.name for f in dataclasses.fields(ADMArch)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PropagateError(f"{source}: unknown ADM option(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(names))}")
        arch = ADMArch(**data)
        try:
            arch.validate()
        except PropagateError as exc:
            raise PropagateError(f"{source}: {exc}") from None
        return arch

    def multipliers(self) -> tuple[float, ...]:
        """Channel multiplier per level (finest first)."""
        if self.channel_mult in (None, ""):
            if self.image_size not in _DEFAULT_CHANNEL_MULT:
                raise PropagateError(
                    f"ADM image_size {self.image_size} has no default channel_mult: give channel_mult "
                    f"(for example '1,2,2') or use one of {', '.join(map(str, _DEFAULT_CHANNEL_MULT))}"
                )
            return _DEFAULT_CHANNEL_MULT[self.image_size]
        try:
            return tuple(float(v) for v in str(self.channel_mult).split(","))
        except ValueError:
            raise PropagateError(
                f"ADM channel_mult {self.channel_mult!r} is not a comma-separated list of numbers"
            ) from None

    def attention_downsample_rates(self) -> set[int]:
        """Downsampling rates (1, 2, 4, ...) at which attention blocks sit."""
        try:
            sizes = [int(v) for v in str(self.attention_resolutions).split(",") if v.strip()]
        except ValueError:
            raise PropagateError(
                f"ADM attention_resolutions {self.attention_resolutions!r} is not a comma-separated list of integers"
            ) from None
        return {self.image_size // s for s in sizes}

    @property
    def levels(self) -> int:
        return len(self.multipliers())

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per level but the last)."""
        return 2 ** (self.levels - 1)

    def validate(self) -> None:
        """The ranges declared on the fields, then a layout the network can be built with."""
        check_fields(self, "", " for an ADM network")
        mults = self.multipliers()
        self.attention_downsample_rates()
        for m in mults:
            ch = int(m * self.num_channels)
            if ch <= 0 or ch % 32:
                raise PropagateError(
                    f"ADM num_channels {self.num_channels} x channel_mult {m} = {ch} channels: group norm needs a "
                    "positive multiple of 32; change num_channels or channel_mult"
                )
            if self.num_head_channels != -1 and ch % self.num_head_channels:
                raise PropagateError(
                    f"ADM {ch} channels do not split into heads of num_head_channels {self.num_head_channels}; "
                    "change num_head_channels"
                )


TINY_ARCH: dict[str, ArchValue] = {
    # The 256x256 layout (six levels, two res blocks each, attention at the same places, so output block 7 is again
    # at 1/8) with 32 channels at every level: 1.4M parameters instead of 553M.
    "num_channels": 32,
    "channel_mult": "1,1,1,1,1,1",
    "num_head_channels": 16,
}


# --------------------------------------------------------------------------------------------------------------
# Noise schedule
# --------------------------------------------------------------------------------------------------------------


def beta_schedule(name: str, steps: int) -> np.ndarray:
    """Betas of the named schedule, ``[steps]`` float64, as guided-diffusion defines them.

    linear: evenly spaced from 1e-4 to 0.02, both scaled by 1000 / steps (so other step counts keep the shape).
    cosine: betas from alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2, each capped at 0.999.
    """
    if steps < 1:
        raise PropagateError(f"ADM diffusion_steps must be positive, got {steps}")
    if name == "linear":
        scale = 1000.0 / steps
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    if name == "cosine":
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)], dtype=np.float64
        )
    raise PropagateError(f"unknown ADM noise_schedule {name!r}: use linear or cosine")


def q_sample_coefficients(name: str, steps: int, t: int) -> tuple[float, float]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` so that ``x_t = a * x0 + b * eps``; abar_t = prod_{s<=t} (1 - beta_s)."""
    if not 0 <= t < steps:
        raise PropagateError(f"ADM timestep t={t} is outside the schedule: use 0 <= t < diffusion_steps ({steps})")
    alphas_cumprod = np.cumprod(1.0 - beta_schedule(name, steps))
    abar = float(alphas_cumprod[t])
    # float64 then float32, like the reference's per-timestep lookup.
    return float(np.float32(math.sqrt(abar))), float(np.float32(math.sqrt(1.0 - abar)))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``timesteps`` ``[N]`` -> ``[N, dim]`` float32: cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    angles = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# --------------------------------------------------------------------------------------------------------------
# Layers (attribute names are those of the released checkpoints)
# --------------------------------------------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """Group norm with 32 groups, computed in float32 whatever the input dtype (fp16 statistics overflow)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 conv (``op``), or 2x2 average pooling when ``use_conv`` is False."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour repetition, then an optional 3x3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (up or down) on the way.

    ``in_layers``: norm, SiLU, 3x3 conv (a resampling block resamples after the SiLU, before the conv, and
    resamples the skip path the same way). ``emb_layers``: SiLU, linear to ``out`` channels (twice that with
    scale-shift norm). ``out_layers``: norm, [scale-shift], SiLU, dropout, 3x3 conv. The skip is the identity
    or a 1x1 conv when the channel count changes.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, C, H, W]``, ``emb`` ``[N, E]`` float32 -> ``[N, C_out, H', W']``."""
        if self.resample:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        cond = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = cond.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + cond)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, added back to the input.

    ``qkv`` (1x1 conv to 3C channels) is split into heads either head-first (the released models: per head a
    contiguous [q, k, v] group of 3*d channels) or q/k/v-first (``new_order``). ``proj_out`` maps back to C.
    """

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool) -> None:
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        if channels % self.num_heads:
            raise PropagateError(f"ADM attention: {channels} channels do not split into {self.num_heads} heads; "
                                 "change num_heads")
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> ``[N, C, H, W]``."""
        n, c, height, width = x.shape
        flat = x.reshape(n, c, height * width)
        qkv = self.qkv(self.norm(flat))  # [N, 3C, T]
        d = c // self.num_heads
        if self.new_order:
            q, k, v = (part.reshape(n, self.num_heads, d, -1) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(n, self.num_heads, 3 * d, -1).split(d, dim=2)
        # [N, heads, T, d]; softmax(q.k / sqrt(d)) v, with a fused kernel where one exists (memory: T is 6240 at 1/8)
        out = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
        out = out.transpose(2, 3).reshape(n, c, -1)
        return (flat + self.proj_out(out)).reshape(n, c, height, width)


class TimestepSequential(nn.Sequential):
    """A sequence of layers where residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The ADM UNet, organised for feature extraction.

    ``input_blocks`` (a conv, then per level ``num_res_blocks`` res blocks [+ attention] and a downsampling
    block between levels), ``middle_block`` (res, attention, res), ``output_blocks`` (per level, coarsest first,
    ``num_res_blocks + 1`` res blocks fed with the matching input block's output concatenated [+ attention], the
    last one followed by an upsampling block except at the finest level), ``out`` (norm, SiLU, conv to 3 or 6
    channels). ``out`` and ``label_emb`` exist so that checkpoints load strictly; :meth:`forward` never uses
    ``out`` nor any output block after the one asked for.

    Attributes:
        output_channels: channels of each output block's result.
        output_strides: input pixels per cell of each output block's result.
    """

    def __init__(self, arch: ADMArch) -> None:
        super().__init__()
        arch.validate()
        self.arch = arch
        mults = arch.multipliers()
        attn_rates = arch.attention_downsample_rates()
        base = arch.num_channels
        emb_dim = 4 * base
        heads_up = arch.num_heads if arch.num_heads_upsample == -1 else arch.num_heads_upsample

        def res(ch_in: int, ch_out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch_in, emb_dim, arch.dropout, ch_out, arch.use_scale_shift_norm, up=up, down=down)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, arch.num_head_channels, arch.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if arch.class_cond:
            self.label_emb = nn.Embedding(1000, emb_dim)

        ch = first_ch = int(mults[0] * base)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(3, ch, 3, padding=1))])
        skip_channels = [ch]
        rate = 1
        for level, mult in enumerate(mults):
            for _ in range(arch.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * base))]
                ch = int(mult * base)
                if rate in attn_rates:
                    layers.append(attn(ch, arch.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(mults) - 1:
                down = res(ch, ch, down=True) if arch.resblock_updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                rate *= 2

        self.middle_block = TimestepSequential(res(ch), attn(ch, arch.num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        self.output_channels: list[int] = []
        self.output_strides: list[int] = []
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(arch.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mult * base))]
                ch = int(mult * base)
                if rate in attn_rates:
                    layers.append(attn(ch, heads_up))
                if level and i == arch.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if arch.resblock_updown else Upsample(ch, use_conv=True))
                    rate //= 2
                self.output_blocks.append(TimestepSequential(*layers))
                self.output_channels.append(ch)
                self.output_strides.append(rate)

        out_channels = 6 if arch.learn_sigma else 3
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(first_ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, up_ft_index: int,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Features of output block ``up_ft_index``.

        Args:
            x: ``[N, 3, H, W]`` noised images in the convs' dtype; H, W multiples of ``arch.size_multiple``.
            timesteps: ``[N]`` diffusion timesteps.
            up_ft_index: the output block whose result is returned; later blocks are not run.
            y: ``[N]`` class labels, only for class-conditional models.

        Returns:
            ``[N, output_channels[i], H / output_strides[i], W / output_strides[i]]`` in x's dtype.
        """
        if not 0 <= up_ft_index < len(self.output_blocks):
            raise PropagateError(
                f"ADM up_ft_index {up_ft_index} is out of range: this model has output blocks "
                f"0..{len(self.output_blocks) - 1}"
            )
        emb = self.time_embed(timestep_embedding(timesteps, self.arch.num_channels).to(self.time_embed[0].weight))
        if self.arch.class_cond:
            if y is None:
                raise PropagateError("this ADM checkpoint is class-conditional and needs class labels; use an "
                                     "unconditional one")
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks[: up_ft_index + 1]:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return h


def set_compute_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Put convolutions in ``dtype`` and every other parameter in float32 (like the reference's fp16 mode:
    timestep MLPs, embeddings and norms stay in full precision)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            module.to(dtype)
        elif isinstance(module, (nn.Linear, nn.GroupNorm, nn.Embedding)):
            module.to(torch.float32)
    return model


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def sidecar_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's architecture options are stored: ``<checkpoint>.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


def read_sidecar(checkpoint: str | Path) -> dict[str, ArchValue] | None:
    """The architecture options saved beside ``checkpoint``, or None when there is no side-car file."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PropagateError(f"{path}: not a readable JSON file of ADM options ({exc.__class__.__name__}); fix or "
                             "delete it") from None
    arch = data.get("arch") if isinstance(data, dict) else None
    if not isinstance(arch, dict):
        raise PropagateError(f"{path}: expected a JSON object with an 'arch' mapping of ADM options; fix or delete it")
    return arch


def _examples(names: Sequence[str], n: int = 2) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def load_adm_checkpoint(path: str | Path, arch: ADMArch) -> ADMUNet:
    """Build the UNet for ``arch`` and load ``path`` into it with strict key and shape matching (on the CPU,
    float32). Any problem is a one-line PropagateError naming the file and what was expected."""
    path = Path(path)
    expected = (f"expected guided-diffusion's 256x256_diffusion_uncond.pt ({CHECKPOINT_URL}) or another ADM "
                "checkpoint: pass --model PATH")
    if not path.is_file():
        raise PropagateError(f"ADM checkpoint {path} does not exist; {expected}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors all mean "not a checkpoint we can read"
        raise PropagateError(f"ADM checkpoint {path} is not a readable PyTorch state dict "
                             f"({exc.__class__.__name__}); {expected}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PropagateError(f"ADM checkpoint {path} does not hold a state dict of tensors; {expected}")

    with torch.device("meta"):  # no memory and no random init for the real 550M-parameter model
        model = ADMUNet(arch)
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    misshaped = [
        f"{k} {list(state[k].shape)} vs {list(wanted[k].shape)}"
        for k in wanted
        if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_examples(unexpected)})")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped (checkpoint vs model: {_examples(misshaped)})")
        raise PropagateError(
            f"ADM checkpoint {path} does not match the architecture: {'; '.join(parts)}; expected a checkpoint of the "
            f"ADM options {arch.describe()} (the 256x256_diffusion_uncond.pt defaults unless a side-car "
            f"{sidecar_path(path).name} or extractor options say otherwise): set the extractor's ADM options to the "
            "checkpoint's, e.g. --set extractor.num_channels=..."
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def save_tiny_checkpoint(path: str | Path, seed: int = 0, **arch: ArchValue) -> Path:
    """Save a randomly initialised ADM state dict to ``path`` and its options to ``<path>.json``.

    ``arch`` overrides :data:`TINY_ARCH` (the 256x256 layout, 32 channels at every level) and then the
    :class:`ADMArch` defaults. Weights use PyTorch's default init everywhere (no zero-initialised output convs,
    unlike training), so every layer shapes the features. Returns ``path``.
    """
    path = Path(path)
    options = ADMArch.from_dict({**TINY_ARCH, **arch}, source="save_tiny_checkpoint")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ADMUNet(options)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    atomic_write_json(sidecar_path(path),
                      {"arch": options.to_dict(), "seed": seed, "note": "random weights, for tests"})
    return path


__all__ = ["ADMArch", "ADMUNet", "CHECKPOINT_URL", "TINY_ARCH", "load_adm_checkpoint", "q_sample_coefficients",
           "read_sidecar", "save_tiny_checkpoint", "set_compute_dtype", "sidecar_path"]
