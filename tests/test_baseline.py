"""The weight-free baseline extractor: known colours, shapes, determinism and its options."""
from __future__ import annotations

import pytest
import torch

from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.features.baseline import BaselineExtractor, BaselineOptions, rgb_to_lab


def _images(num: int = 2, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(num, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_rgb_to_lab_known_colours() -> None:
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).view(4, 3, 1, 1)
    lab = rgb_to_lab(colours).view(4, 3)
    torch.testing.assert_close(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=1e-3, rtol=0)  # white
    torch.testing.assert_close(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=1e-3, rtol=0)  # black
    torch.testing.assert_close(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.05, rtol=0)  # sRGB red
    torch.testing.assert_close(lab[3], torch.tensor([32.30, 79.19, -107.86]), atol=0.05, rtol=0)  # sRGB blue


def test_shape_stride_and_size_multiple() -> None:
    ext = BaselineExtractor(BaselineOptions(scales=(1, 3), bins=6, fourier_dim=16))
    assert ext.stride == 8 and ext.size_multiple == 8 and ext.device == torch.device("cpu")
    feats = ext.extract(_images(2, 32, 48), [0, 1])
    assert feats.shape == (2, 2 * (16 + 6), 4, 6) and feats.dtype == torch.float32
    with pytest.raises(PropagateError, match="multiple of 8"):
        ext.extract(_images(1, 30, 48), [0])


def test_uniform_image_has_equal_cells() -> None:
    feats = BaselineExtractor().extract(torch.full((1, 3, 24, 32), 0.3), [0])
    assert torch.equal(feats, feats[:, :, :1, :1].expand_as(feats))


def test_orientation_histograms_follow_the_gradient() -> None:
    ext = BaselineExtractor(BaselineOptions(scales=(1,), bins=8, fourier_dim=16))
    ramp = torch.linspace(0, 1, 32)
    across = ramp.view(1, 1, 1, 32).expand(1, 3, 24, 32)  # brightness grows along x: gradient angle 0
    down = ramp[:24].view(1, 1, 24, 1).expand(1, 3, 24, 32)  # along y: angle pi/2, bin 4 of 8
    for image, strongest in ((across, 0), (down, 4)):
        hist = ext.extract(image.contiguous(), [0])[0, 16:]  # [bins, h, w] after the 16 colour features
        assert (hist.argmax(0) == strongest).all()


def test_deterministic_and_independent_of_frame_ids_and_batching() -> None:
    ext = build_extractor("baseline")
    images = _images(3, seed=2)
    together = ext.extract(images, [0, 1, 2])
    assert torch.equal(together, BaselineExtractor().extract(images, [7, 8, 9]))  # no noise, fixed projection
    one_by_one = torch.cat([ext.extract(images[i:i + 1], [i]) for i in range(3)])
    torch.testing.assert_close(one_by_one, together, rtol=1e-6, atol=1e-6)


def test_options_settings_and_device() -> None:
    ext = build_extractor("baseline", {"scales": [1, 5], "colour_weight": 2, "device": "auto"})
    assert isinstance(ext, BaselineExtractor) and ext.device == torch.device("cpu")  # auto: the baseline runs on cpu
    assert ext.settings() == {"features": "baseline", "scales": [1, 5], "bins": 8, "colour_weight": 2.0,
                              "colour_sigma": 0.1, "fourier_dim": 64}
    assert "no DIFT" in ext.describe()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line() -> None:
    with pytest.raises(PropagateError, match="device 'cuda' was asked for") as info:
        build_extractor("baseline", {"device": "cuda"})
    assert "\n" not in str(info.value)
