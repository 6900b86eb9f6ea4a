"""DIFT features from OpenAI's ADM UNet (guided-diffusion); the network itself is :mod:`propagate.features.adm_net`.

DIFT (Tang et al. 2023) reads features from the ablated diffusion model of Dhariwal & Nichol (2021) for label
propagation (DESIGN section 3). Per batch of frames:

    image [0, 1] -> [-1, 1] -> q_sample at timestep t (the checkpoint's beta schedule) -> input blocks
    -> middle block -> output blocks 0 .. up_ft_index -> stop; features = mean over ``ensemble_size`` noised copies

Noise: each frame's ``[ensemble_size, 3, H, W]`` noise is drawn with the rule DIFT-SD uses
(:func:`propagate.features.common.frame_generator` of ``(seed, frame_id)``). Until this extractor moved to that
shared rule it seeded its generator with ``seed * 2**31 + frame_id``, so ADM features differ from those of earlier
versions (same distribution, other draws); feature caches and recorded results from before are not comparable.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from propagate.device import DTYPES, resolve_device, resolve_dtype
from propagate.errors import PropagateError
from propagate.features.adm_net import (
    CHECKPOINT_URL,
    ADMArch,
    load_adm_checkpoint,
    q_sample_coefficients,
    read_sidecar,
    set_compute_dtype,
    sidecar_path,
)
from propagate.features.base import FeatureExtractor
from propagate.features.common import frame_normals
from propagate.options import Checked, at_least, option


@dataclass(frozen=True)
class DiftADMOptions(ADMArch, Checked):
    """Options of :class:`DiftADMExtractor` (the ``extractor:`` section of the ``*_adm`` presets); the defaults are
    DIFT's DAVIS settings: t 51, output block 7, ensemble 4.

    The architecture options (``image_size`` ... ``class_cond``, inherited from :class:`ADMArch`) default to the
    256x256_diffusion_uncond model. When ``<model>.json`` exists (written by
    :func:`propagate.features.adm_net.save_tiny_checkpoint`) it supplies them; an option given here with a
    non-default value overrides it.

    Attributes:
        model: path to ``256x256_diffusion_uncond.pt`` (or another ADM checkpoint matching the architecture).
        t: diffusion timestep of the noise added before the forward pass.
        up_ft_index: output block whose result is the feature map.
        ensemble_size: noised copies per frame; features are their mean.
        dtype: fp32, fp16, bf16 or auto (fp16 on cuda, bf16 on CPUs with AMX/AVX512-BF16, else fp32); convolutions
            run in it.
        device: auto (cuda if available), cpu, cuda, cuda:N, mps.
        seed: noise seed; frame ``i`` draws its noise from ``(seed, i)``.
        batch_size: most noised copies per forward pass (speed and memory only).
        diffusion_steps, noise_schedule: the noise schedule of the checkpoint's training (1000, linear).
    """

    key_prefix = "extractor."
    key_owner = " for features 'adm'"

    model: str | Path | None = None
    t: int = option(51, at_least(0))  # the largest: diffusion_steps - 1 (q_sample_coefficients)
    up_ft_index: int = option(7, at_least(0))  # the largest: the checkpoint's last output block
    ensemble_size: int = option(4, at_least(1))
    dtype: str = "auto"
    device: str = "auto"
    seed: int = option(0, at_least(0))
    batch_size: int = option(8, at_least(1))
    diffusion_steps: int = option(1000, at_least(1))
    noise_schedule: str = "linear"

    def __post_init__(self) -> None:
        self.check()  # the values as given, before ADMArch turns lists into its "a,b,c" strings
        ADMArch.__post_init__(self)


class DiftADMExtractor(FeatureExtractor):
    """DIFT features from an ADM checkpoint: ``output_blocks[up_ft_index]`` (block 7 of the 256x256 model: 512
    channels at 1/8), averaged over noised copies."""

    name = "adm"
    options_type = DiftADMOptions

    def __init__(self, options: DiftADMOptions = DiftADMOptions()) -> None:
        if options.model is None or str(options.model).strip() == "":
            raise PropagateError(
                "features adm need a checkpoint: pass --model PATH to 256x256_diffusion_uncond.pt (download: "
                f"{CHECKPOINT_URL})"
            )
        self.model_path = Path(options.model).expanduser()
        defaults = ADMArch().to_dict()
        sidecar = read_sidecar(self.model_path) or {}
        given = {k: v for k, v in options.to_dict().items() if v != defaults[k]}
        self.arch = ADMArch.from_dict({**defaults, **sidecar, **given},
                                      source=str(sidecar_path(self.model_path)) if sidecar else "adm options")
        if self.arch.class_cond:
            raise PropagateError(
                f"ADM checkpoint {self.model_path}: class-conditional models need a class label, which DIFT does not "
                "use; use the unconditional 256x256_diffusion_uncond.pt"
            )

        self.t = int(options.t)
        self.up_ft_index = int(options.up_ft_index)
        self.ensemble_size = options.ensemble_size
        self.seed = options.seed
        self.batch_size = options.batch_size
        self.diffusion_steps = int(options.diffusion_steps)
        self.noise_schedule = str(options.noise_schedule)
        self.coef_x0, self.coef_eps = q_sample_coefficients(self.noise_schedule, self.diffusion_steps, self.t)

        self.device = resolve_device(options.device)
        self.dtype_name = resolve_dtype(options.dtype, self.device)
        self.dtype = DTYPES[self.dtype_name]

        unet = load_adm_checkpoint(self.model_path, self.arch)
        if not 0 <= self.up_ft_index < len(unet.output_blocks):
            raise PropagateError(
                f"adm up_ft_index {self.up_ft_index} is out of range: {self.model_path} has output blocks "
                f"0..{len(unet.output_blocks) - 1}"
            )
        self.unet = set_compute_dtype(unet.to(self.device), self.dtype)
        self.channels = unet.output_channels[self.up_ft_index]
        # Input pixels per feature cell of output block up_ft_index (8 for block 7 of the 256x256 model).
        self.stride = unet.output_strides[self.up_ft_index]

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this (32 for the 256x256 model, which halves them 5 times)."""
        return self.arch.size_multiple

    def settings(self) -> dict[str, object]:
        path = self.model_path.resolve()
        size = path.stat().st_size if path.is_file() else None
        return {
            "model": str(path),
            "model_bytes": size,
            "t": self.t,
            "up_ft_index": self.up_ft_index,
            "ensemble_size": self.ensemble_size,
            "dtype": self.dtype_name,
            "seed": self.seed,
            "diffusion_steps": self.diffusion_steps,
            "noise_schedule": self.noise_schedule,
            **self.arch.to_dict(),
        }

    def describe(self) -> str:
        return (
            f"adm ({self.model_path.name}, t={self.t}, output block {self.up_ft_index}: {self.channels} ch at "
            f"1/{self.stride}, ensemble {self.ensemble_size}, {self.dtype_name})"
        )

    def noise(self, frame_ids: Sequence[int], height: int, width: int) -> torch.Tensor:
        """The ensemble noise of each frame, ``[B, E, 3, H, W]`` float32 on the CPU (seeded by (seed, frame_id))."""
        shape = (self.ensemble_size, 3, height, width)
        return torch.stack([frame_normals(self.seed, fid, shape)[0] for fid in frame_ids])

    @torch.no_grad()
    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        """``images`` ``[B, 3, H, W]`` in [0, 1] -> features ``[B, C, H / stride, W / stride]`` float32."""
        frame_ids = self.check_batch(images, frame_ids)
        b, _, height, width = images.shape
        x0 = images.to(self.device, torch.float32) * 2 - 1
        eps = self.noise(frame_ids, height, width).to(self.device)
        x_t = (self.coef_x0 * x0[:, None] + self.coef_eps * eps).reshape(b * self.ensemble_size, 3, height, width)
        outputs = []
        for chunk in x_t.split(self.batch_size):
            steps = torch.full((chunk.shape[0],), self.t, device=self.device, dtype=torch.float32)
            outputs.append(self.unet(chunk.to(self.dtype), steps, self.up_ft_index).float())
        feats = torch.cat(outputs)
        return feats.reshape(b, self.ensemble_size, *feats.shape[1:]).mean(dim=1)


__all__ = ["DiftADMExtractor", "DiftADMOptions"]
