"""Run configuration: plain dataclasses, YAML presets under ``configs/``, and ``key=value`` overrides.

A preset is a YAML file whose top-level keys are the fields of :class:`Config`; sections it leaves out keep
their defaults, which are DIFT's DAVIS settings for Stable Diffusion. Command-line flags are applied on top as
dotted overrides (``propagation.topk=10``), so every option is reachable from the CLI.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from propagate.errors import PropagateError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ResizeConfig:
    """How frames are resized before feature extraction.

    Default (DIFT): short side to ``short_side``, long side scaled with it and floored to a multiple of
    ``multiple`` (854x480 -> 832x480). ``size: [W, H]`` instead forces one size, aspect not kept (JHMDB: 320x320).
    """

    short_side: int = 480
    multiple: int = 32
    size: list[int] | None = None


@dataclass
class PropagationConfig:
    """Label propagation (DESIGN sections 4 and 5); defaults are DIFT's DAVIS settings for SD."""

    temperature: float = 0.2
    topk: int = 15
    n_last_frames: int = 28
    radius: int = 15
    window: str = "square"  # square (|dy|<=r and |dx|<=r), disk (dy^2+dx^2 <= r^2) or none
    window_first: bool = True  # restrict frame 0's keys to the window as well (DIFT/DINO yes, CRW no)
    label_downsample: str = "nearest"  # first-frame mask to the grid: nearest (DINO) or area (soft fractions)
    minmax_norm: bool = True  # per-channel min-max normalisation of upsampled labels before argmax (DINO)
    screen: str = "auto"  # bf16 pre-screening of affinities with an exact fp32 re-check: auto, on or off
    device: str = "auto"  # where propagation runs: auto (cuda if available), cpu, cuda


@dataclass
class KeypointConfig:
    """Keypoint labels and decoding (CRW protocol, DESIGN section 5)."""

    sigma: float = 0.5  # Gaussian heatmap sigma in grid cells
    decode_topk: int = 3  # cells averaged per joint when decoding
    cell_convention: str = "centre"  # pixel <-> grid mapping: centre (pixel-centre aligned) or crw (u = x * w / W)


@dataclass
class Config:
    """Everything one run needs besides its inputs."""

    features: str = "dift_sd"
    extractor: dict[str, Any] = field(default_factory=dict)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    batch_frames: int = 4  # frames extracted together (each with its ensemble copies)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"resize": ResizeConfig, "propagation": PropagationConfig, "keypoints": KeypointConfig}


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from nested dicts; unknown keys are an error naming ``source``."""
    data = dict(data or {})
    top = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise PropagateError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            cls = _SECTIONS[key]
            if not isinstance(value, dict):
                raise PropagateError(f"{source}: {key} must be a mapping, got {value!r}")
            names = {f.name for f in dataclasses.fields(cls)}
            bad = sorted(set(value) - names)
            if bad:
                raise PropagateError(
                    f"{source}: unknown key(s) {', '.join(f'{key}.{b}' for b in bad)}; known: {', '.join(sorted(names))}"
                )
            kwargs[key] = cls(**value)
        elif key == "extractor":
            if not isinstance(value, dict):
                raise PropagateError(f"{source}: extractor must be a mapping, got {value!r}")
            kwargs[key] = dict(value)
        else:
            kwargs[key] = value
    return Config(**kwargs)


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset path: an existing file, or a name looked up in ``configs/`` (``davis_sd`` or ``davis_sd.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}", CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none found"
    raise PropagateError(f"no preset {str(name_or_path)!r}: give a YAML file or one of: {available}")


def load_config(preset: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a preset (defaults if ``None``) and apply overrides (``["propagation.topk=10"]`` or a dotted dict)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if preset is not None:
        path = resolve_preset(preset)
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise PropagateError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the file") from None
        if not isinstance(data, dict):
            raise PropagateError(f"{path}: a preset must be a YAML mapping")
    for key, value in parse_overrides(overrides).items():
        set_dotted(data, key, value)
    return config_from_dict(data, source)


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise PropagateError(f"override {item!r} is not KEY=VALUE (for example propagation.topk=10)")
        key, raw = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return parsed


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PropagateError(f"override {key!r}: {part} is not a section")
    node[parts[-1]] = value
