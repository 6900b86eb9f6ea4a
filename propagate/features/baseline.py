"""A weight-free baseline extractor: colour and gradient-orientation statistics around each grid cell.

No model, no download, a few milliseconds per frame on a CPU: the way to try the tool where DIFT weights are not
available, and a floor that DIFT should beat. Each 8x8 cell is described at several neighbourhood sizes by its mean
CIE-Lab colour and a histogram of gradient orientations (HOG-like, weighted by gradient magnitude). Colour enters
through random Fourier features (a fixed random projection, not learned weights), so the cosine similarity the
propagator computes approximates a Gaussian kernel of the colour distance; orientation histograms are l2-normalised.
It is deterministic (the projection comes from a fixed seed; no noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from propagate.device import resolve_device
from propagate.features.base import FeatureExtractor
from propagate.options import Checked, Rule, above, at_least, at_most, option


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` sRGB in [0, 1] -> CIE-Lab (D65) with L in [0, 100]."""
    linear = torch.where(images > 0.04045, ((images + 0.055) / 1.055) ** 2.4, images / 12.92)
    m = torch.tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
        dtype=images.dtype, device=images.device,
    )
    xyz = torch.einsum("ij,bjhw->bihw", m, linear)
    xyz = xyz / torch.tensor([0.950456, 1.0, 1.088754], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lum = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lum, a, b], 1)


# A scale s pools s x s cells centred on each cell, so it must be odd (an even one would shift the grid by half a cell).
_SCALES = Rule(lambda v: len(v) >= 1 and all(s >= 1 and s % 2 == 1 for s in v),
               "{type}, at least one, each odd and >= 1 (a neighbourhood of s x s cells)")


@dataclass(frozen=True)
class BaselineOptions(Checked):
    """Options of :class:`BaselineExtractor` (the ``extractor:`` section of the ``*_baseline`` presets).

    Attributes:
        scales: neighbourhood sizes, in cells, at which each cell is described.
        bins: orientation bins of the gradient histograms.
        colour_weight: weight of the colour features against the (unit-norm) histograms.
        colour_sigma: width of the Gaussian colour kernel the random Fourier features approximate (Lab / 100).
        fourier_dim: random Fourier features per scale.
        device: ``cpu`` (``auto`` means cpu too: the baseline is fast there), ``cuda``, ``cuda:N`` or ``mps``.
    """

    key_prefix = "extractor."
    key_owner = " for features 'baseline'"

    scales: Sequence[int] = option((1, 3, 5), _SCALES)
    bins: int = option(8, at_least(1), at_most(360))
    colour_weight: float = option(1.0, at_least(0))
    colour_sigma: float = option(0.1, above(0), at_least(0.001, " (narrower than one 8-bit colour step)"))
    fourier_dim: int = option(64, at_least(1), at_most(4096))
    device: str = "cpu"


class BaselineExtractor(FeatureExtractor):
    """Colour + orientation-histogram features at stride 8 (a baseline, not DIFT), with the options of
    :class:`BaselineOptions`."""

    name = "baseline"
    options_type = BaselineOptions
    stride = 8

    def __init__(self, options: BaselineOptions = BaselineOptions()) -> None:
        self.scales = tuple(int(s) for s in options.scales)
        self.bins = int(options.bins)
        self.colour_weight = float(options.colour_weight)
        self.colour_sigma = float(options.colour_sigma)
        self.fourier_dim = int(options.fourier_dim)
        self.device = resolve_device("cpu" if options.device == "auto" else options.device)
        g = torch.Generator().manual_seed(0)
        self._proj = (torch.randn(self.fourier_dim, 3, generator=g) / self.colour_sigma).to(self.device)
        self._phase = (torch.rand(self.fourier_dim, generator=g) * 2 * torch.pi).to(self.device)

    def settings(self) -> dict[str, object]:
        return {
            "features": self.name, "scales": list(self.scales), "bins": self.bins, "colour_weight": self.colour_weight,
            "colour_sigma": self.colour_sigma, "fourier_dim": self.fourier_dim,
        }

    def _fourier(self, lab: torch.Tensor) -> torch.Tensor:
        """``[B, 3, h, w]`` colours -> ``[B, D, h, w]`` random Fourier features (unit norm on average)."""
        z = torch.einsum("dc,bchw->bdhw", self._proj, lab) + self._phase.view(1, -1, 1, 1)
        return torch.cos(z) * (2.0 / self.fourier_dim) ** 0.5

    def describe(self) -> str:
        return "baseline colour+HOG features (no DIFT)"

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        self.check_batch(images, frame_ids)
        images = images.to(self.device, torch.float32)
        lab = rgb_to_lab(images) / torch.tensor([100.0, 128.0, 128.0], device=self.device).view(1, 3, 1, 1)
        grey = lab[:, :1]
        sobel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=self.device).view(1, 1, 3, 3) / 8
        gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel_x)
        gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel_x.transpose(2, 3))
        magnitude = torch.sqrt(gx * gx + gy * gy)
        angle = torch.atan2(gy, gx) % torch.pi  # unsigned orientation in [0, pi)
        position = angle / torch.pi * self.bins
        lower = position.floor().long() % self.bins
        frac = position - position.floor()
        hist = torch.zeros(images.shape[0], self.bins, *images.shape[2:], device=self.device)
        hist.scatter_add_(1, lower, magnitude * (1 - frac))
        hist.scatter_add_(1, (lower + 1) % self.bins, magnitude * frac)
        colour_cells = F.avg_pool2d(lab, self.stride)  # [B, 3, h, w]
        hist_cells = F.avg_pool2d(hist, self.stride)  # [B, bins, h, w]
        groups = []
        for scale in self.scales:
            pad = scale // 2
            pool = (lambda x: x) if scale == 1 else (
                lambda x, s=scale, p=pad: F.avg_pool2d(F.pad(x, (p, p, p, p), mode="replicate"), s, stride=1)
            )
            groups.append(self.colour_weight * self._fourier(pool(colour_cells)))
            groups.append(F.normalize(pool(hist_cells), dim=1))
        return torch.cat(groups, 1)
