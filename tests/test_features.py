"""The features package itself: the registry and option checking (``__init__``), the extractor interface (``base``)
and what every extractor shares (``device``: device and dtype; ``common``: per-frame noise)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
import yaml

from propagate.device import DTYPES, resolve_device, resolve_dtype
from propagate.errors import PropagateError
from propagate.features import EXTRACTORS, build_extractor, build_options, extractor_class, preset_name
from propagate.features.base import FeatureExtractor
from propagate.features.baseline import BaselineOptions
from propagate.features.common import frame_generator, frame_normals

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _one_line(call, match: str) -> str:
    with pytest.raises(PropagateError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------------------
# Registry


def test_every_backbone_has_an_options_dataclass_with_defaults() -> None:
    for name in EXTRACTORS:
        cls = extractor_class(name)
        assert issubclass(cls, FeatureExtractor) and cls.name == name
        options = cls.options_type()  # every option has a default
        assert dataclasses.is_dataclass(options) and cls.options_type.__dataclass_params__.frozen


def test_unknown_features_list_the_choices() -> None:
    for call in (lambda: extractor_class("dino"), lambda: build_extractor("dino"),
                 lambda: preset_name("davis", "dino")):
        message = _one_line(call, "unknown features 'dino'")
        assert "adm, baseline, dift_sd" in message


def test_preset_name_maps_features_to_existing_presets() -> None:
    assert preset_name("davis", "dift_sd") == "davis_sd"
    assert preset_name("jhmdb", "adm") == "jhmdb_adm"
    assert preset_name("davis", "baseline") == "davis_baseline"
    for task in ("davis", "jhmdb"):
        for name in EXTRACTORS:
            preset = CONFIGS / f"{preset_name(task, name)}.yaml"
            assert preset.is_file(), preset
            data = yaml.safe_load(preset.read_text())
            assert data["features"] == name
            build_options(name, data.get("extractor"))  # every preset's options are valid for its extractor


def test_unknown_option_is_one_line_listing_the_known_ones() -> None:
    message = _one_line(lambda: build_extractor("baseline", {"bins": 8, "colour_weigth": 2.0}),
                        "take no option.s. colour_weigth")
    assert "colour_weight" in message and "scales" in message


@pytest.mark.parametrize(
    ("name", "key", "value", "wanted"),
    [
        ("dift_sd", "t", "abc", "an integer"),
        ("dift_sd", "t", 1.5, "an integer"),
        ("dift_sd", "t", float("nan"), "an integer"),
        ("dift_sd", "t", True, "an integer"),
        ("dift_sd", "ensemble_size", None, "an integer"),
        ("dift_sd", "prompt", 3, "a string"),
        ("dift_sd", "model", 7, "a string or a path"),
        ("adm", "learn_sigma", "yes", "true or false"),
        ("adm", "dropout", float("inf"), "a finite number"),
        ("adm", "channel_mult", ["1", "2"], "a list of finite numbers"),
        ("baseline", "colour_weight", float("nan"), "a finite number"),
        ("baseline", "scales", "135", "a list of integers"),
        ("baseline", "scales", [1, 2.5], "a list of integers"),
        ("baseline", "device", 0, "a string"),
    ],
)
def test_wrong_typed_option_is_one_line_naming_it(name: str, key: str, value: Any, wanted: str) -> None:
    # Checked before anything is loaded: no model is needed to see these errors.
    message = _one_line(lambda: build_extractor(name, {key: value}), rf"^extractor\.{key}=")
    assert f"features {name!r}" in message and wanted in message


def test_yaml_values_of_the_right_type_are_accepted() -> None:
    options = build_options("baseline", {"scales": [1, 3], "colour_weight": 2, "bins": 6})
    assert options == BaselineOptions(scales=[1, 3], colour_weight=2, bins=6)
    adm = build_options("adm", {"channel_mult": [1, 2, 2], "attention_resolutions": 16, "model": "x.pt"})
    assert adm.channel_mult == "1,2,2" and adm.attention_resolutions == "16"
    assert build_options("dift_sd", {"model": Path("/m"), "t": 0}).model == Path("/m")


# ---------------------------------------------------------------------------------------------------------------
# The interface


class _Grid(FeatureExtractor):
    """The smallest extractor: the mean colour of each cell."""

    name = "grid"
    options_type = BaselineOptions
    stride = 4

    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        self.check_batch(images, frame_ids)
        return torch.nn.functional.avg_pool2d(images, self.stride)

    def settings(self) -> dict[str, Any]:
        return {"stride": self.stride}


def test_size_multiple_defaults_to_the_stride_and_check_batch_uses_it() -> None:
    ext = _Grid()
    assert ext.size_multiple == 4 and ext.device == torch.device("cpu")
    assert ext.extract(torch.rand(2, 3, 8, 12), [0, 1]).shape == (2, 3, 2, 3)
    assert ext.check_batch(torch.rand(1, 3, 4, 4), [torch.tensor(7)]) == [7]
    _one_line(lambda: ext.extract(torch.rand(1, 3, 6, 8), [0]), "multiple of 4, got 8x6")
    _one_line(lambda: ext.extract(torch.rand(2, 3, 8, 8), [0]), "2 images but 1 frame ids")
    _one_line(lambda: ext.extract(torch.rand(3, 8, 8), [0]), r"expects images \[B, 3, H, W\], got \[3, 8, 8\]")
    assert ext.describe() == "grid (stride=4)"


# ---------------------------------------------------------------------------------------------------------------
# Device and dtype


def test_resolve_device_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
def test_resolve_device_without_cuda_is_one_line() -> None:
    for name in ("cuda", "cuda:1"):
        message = _one_line(lambda name=name: resolve_device(name),
                            f"device {name!r} was asked for but torch sees no CUDA GPU")
        assert "use device cpu or auto" in message


def test_resolve_device_checks_the_gpu_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    _one_line(lambda: resolve_device("cuda:2"), r"torch sees 2 CUDA GPU\(s\); use cuda:0..cuda:1, cpu or auto")


def test_resolve_device_mps_and_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    _one_line(lambda: resolve_device("mps"), "device 'mps' was asked for but torch sees no Apple MPS device")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    for name in ("tpu", "", "CUDA", "cuda:x", "meta"):
        message = _one_line(lambda name=name: resolve_device(name), f"unknown device {name!r}")
        assert "use auto, cpu, cuda, cuda:N or mps" in message


def test_resolve_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import propagate.device as device

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: False)
    assert resolve_dtype("auto", cpu) == "fp32" and resolve_dtype("auto", cuda) == "fp16"
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: True)  # AMX or AVX512-BF16
    assert resolve_dtype("auto", cpu) == "bf16" and resolve_dtype("auto", cuda) == "fp16"
    for alias, name in (("float32", "fp32"), ("float16", "fp16"), ("half", "fp16"), ("bfloat16", "bf16")):
        assert resolve_dtype(alias, cpu) == name
    for name in DTYPES:
        assert resolve_dtype(name, cpu) == name
    assert DTYPES["bf16"] is torch.bfloat16
    message = _one_line(lambda: resolve_dtype("fp8", cpu), "unknown dtype 'fp8'")
    assert "use auto, fp32, fp16 or bf16" in message


# ---------------------------------------------------------------------------------------------------------------
# Noise


def test_frame_generator_depends_only_on_seed_and_frame() -> None:
    def draw(seed: int, frame: int) -> torch.Tensor:
        return torch.randn(64, generator=frame_generator(seed, frame))

    assert torch.equal(draw(0, 5), draw(0, 5))
    others = [draw(0, 6), draw(1, 5), draw(5, 0), draw(0, 0)]
    for other in others:
        assert not torch.allclose(other, draw(0, 5))
    assert abs(float(draw(3, 1).mean())) < 0.5  # standard normal
    _one_line(lambda: frame_generator(-1, 0), r"seed \(-1\) and frame ids \(0\) must be >= 0")
    _one_line(lambda: frame_generator(0, -2), r"frame ids \(-2\)")


def test_frame_normals_draws_in_order_from_the_frame_generator() -> None:
    first, second = frame_normals(4, 9, (2, 3), [5])
    gen = frame_generator(4, 9)
    assert torch.equal(first, torch.randn(2, 3, generator=gen))
    assert torch.equal(second, torch.randn(5, generator=gen))
    assert first.dtype == torch.float32 and first.device.type == "cpu"
    assert not math.isclose(float(first[0, 0]), float(second[0]))
