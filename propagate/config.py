"""Run configuration: plain dataclasses, YAML presets shipped in ``propagate/configs/``, and ``key=value`` overrides.

A preset is a YAML file whose top-level keys are the fields of :class:`Config`; sections it leaves out keep
their defaults, which are DIFT's DAVIS settings for Stable Diffusion. Command-line flags are applied on top as
dotted overrides (``propagation.topk=10``), so every option is reachable from the CLI. Every value is checked
(type and range) when a :class:`Config` is built from data, so a bad preset or flag fails before any work.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from propagate.errors import PropagateError

# The presets are package data, so an installed wheel has them too; the repository's top-level ``configs`` is a
# symlink to this folder.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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
    window: str = "square"  # square (|dy|<=r and |dx|<=r), disk (dy^2+dx^2 <= r^2), open_disk (< r^2, CRW) or none
    window_first: bool = True  # restrict frame 0's keys to the window as well (DIFT/DINO yes, CRW no)
    queue_init: str = "first"  # first: the queue starts empty (frame 0 alone); copies: full of frame 0 (CRW)
    topk_rule: str = "ties"  # ties: keep every affinity >= the k-th (DINO); exact: exactly k (torch.topk, CRW)
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
class KeyframeConfig:
    """How annotated keyframes are propagated (DESIGN section 9; :mod:`propagate.session`).

    ``direction``: ``auto`` (forward for one keyframe on frame 0, else both), ``forward``, ``backward`` or ``both``.
    ``blend``: how a frame between two keyframes mixes the two directions' soft labels: ``linear`` (by temporal
    distance to each keyframe) or ``nearest`` (the nearer keyframe's direction only).
    """

    direction: str = "auto"
    blend: str = "linear"


@dataclass
class PckConfig:
    """PCK scoring of keypoints (:mod:`propagate.pck`)."""

    lost_joints: str = "wrong"  # a joint with no prediction: wrong (counted a miss, kept in the box) or drop (CRW)


@dataclass
class MatchConfig:
    """Matching one image to another (``propagate match``, ``edit``, ``eval spair|hpatches``;
    :mod:`propagate.correspond`).

    Defaults are DIFT's SPair-71k settings; the ``hpatches_*`` presets set the geometric ones.
    """

    size: list[int] | None = None  # [W, H] every image is resized to for extraction (DIFT img_size); null: its own size
    upsample: str = "bilinear"  # features to the image's size before matching (DIFT), or none (argmax over cells)
    prompt: str = ""  # DIFT-SD prompt template; {category} is the image's category (SPair: "a photo of a {category}")
    metric: str = "cosine"  # mutual nearest neighbours of keypoint descriptors: cosine or l2 (DIFT's ADM on HPatches)
    homography: str = "lmeds"  # OpenCV's robust fit of keypoint matches: lmeds or ransac
    reproj_threshold: float = 3.0  # RANSAC inlier distance in pixels (keypoint matches)
    keypoints: int = 1000  # keypoints per image (OpenCV SIFT detector, no weights; DIFT used 1k SuperPoint)
    edit_samples: int = 1000  # pixels sampled inside an edit's alpha and matched
    edit_threshold: float = 5.0  # RANSAC inlier distance in pixels of an edit's homography
    smooth_frames: int = 2  # video edits: edit corners averaged over this many frames either side
    seed: int = 0  # which pixels of the edit are sampled


@dataclass
class Config:
    """Everything one run needs besides its inputs.

    ``overrides`` maps a sequence (or video) name to dotted keys whose values differ for it, applied by the
    dataset protocols (:func:`sequence_config`): ``{"shooting": {"propagation.n_last_frames": {"at_most": 10}}}``.
    """

    features: str = "dift_sd"
    extractor: dict[str, Any] = field(default_factory=dict)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    pck: PckConfig = field(default_factory=PckConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    batch_frames: int = 4  # frames extracted together (each with its ensemble copies)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per sequence: {dotted key: value}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"resize": ResizeConfig, "propagation": PropagationConfig, "keypoints": KeypointConfig,
             "keyframes": KeyframeConfig, "pck": PckConfig,
             "match": MatchConfig}


# What each field accepts: a test and the words that tell the user what to give. Keys are dotted as in overrides.
Check = tuple[Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML true is a bool, and bool is an int


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int) -> Check:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _one_of(*choices: str) -> Check:
    return (lambda v: isinstance(v, str) and v in choices), ", ".join(choices[:-1]) + f" or {choices[-1]}"


_POSITIVE_NUMBER: Check = (lambda v: _is_number(v) and v > 0), "a finite number > 0"
_BOOL: Check = (lambda v: isinstance(v, bool)), "true or false"
_STRING: Check = (lambda v: isinstance(v, str) and v != ""), "a non-empty string"
_SIZE: Check = (
    lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v))
), "null or [W, H] with two integers >= 1"
_SCREEN: Check = (lambda v: isinstance(v, bool) or (isinstance(v, str) and v in ("auto", "on", "off"))), "auto, on or off (or true/false)"

CHECKS: dict[str, Check] = {
    "features": _STRING,
    "batch_frames": _int_at_least(1),
    "resize.short_side": _int_at_least(1),
    "resize.multiple": _int_at_least(1),
    "resize.size": _SIZE,
    "propagation.temperature": _POSITIVE_NUMBER,
    "propagation.topk": _int_at_least(1),
    "propagation.n_last_frames": _int_at_least(0),
    "propagation.radius": _int_at_least(0),
    "propagation.window": _one_of("square", "disk", "open_disk", "none"),
    "propagation.window_first": _BOOL,
    "propagation.queue_init": _one_of("first", "copies"),
    "propagation.topk_rule": _one_of("ties", "exact"),
    "propagation.label_downsample": _one_of("nearest", "area"),
    "propagation.minmax_norm": _BOOL,
    "propagation.screen": _SCREEN,
    "propagation.device": _STRING,
    "keypoints.sigma": _POSITIVE_NUMBER,
    "keypoints.decode_topk": _int_at_least(1),
    "keypoints.cell_convention": _one_of("centre", "crw"),
    "keyframes.direction": _one_of("auto", "forward", "backward", "both"),
    "keyframes.blend": _one_of("linear", "nearest"),
    "pck.lost_joints": _one_of("wrong", "drop"),
    "match.size": _SIZE,
    "match.upsample": _one_of("bilinear", "none"),
    "match.prompt": ((lambda v: isinstance(v, str)), "a string (may be empty)"),
    "match.metric": _one_of("cosine", "l2"),
    "match.homography": _one_of("lmeds", "ransac"),
    "match.reproj_threshold": _POSITIVE_NUMBER,
    "match.keypoints": _int_at_least(4),
    "match.edit_samples": _int_at_least(4),
    "match.edit_threshold": _POSITIVE_NUMBER,
    "match.smooth_frames": _int_at_least(0),
    "match.seed": _int_at_least(0),
}


def check_config(config: Config, source: str = "config") -> Config:
    """Check every field of ``config`` against :data:`CHECKS`; the first bad one is a :class:`PropagateError`."""
    values = config.to_dict()
    for key, (accepts, what) in CHECKS.items():
        section, _, name = key.rpartition(".")
        value = values[section][name] if section else values[name]
        if not accepts(value):
            raise PropagateError(f"{source}: {key}={value!r} is not valid: give {what}")
    return config


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from nested dicts; unknown keys and bad values (:data:`CHECKS`) are an error naming ``source``."""
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
        elif key == "overrides":
            kwargs[key] = _read_overrides(value, source)
        else:
            kwargs[key] = value
    config = check_config(Config(**kwargs), source)
    for name in config.overrides:
        sequence_config(config, name, source)  # every override is a known key with a valid value
    return config


# ---------------------------------------------------------------------------------------------- per-sequence overrides

AT_MOST = "at_most"  # an override value {at_most: N} caps the key at N (DIFT caps shooting's context at 10 frames)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"propagation": {"topk": 5}}`` and ``{"propagation.topk": 5}`` -> ``{"propagation.topk": 5}``; a
    ``{at_most: N}`` mapping is a value, not a section."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and set(value) != {AT_MOST}:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_overrides(value: Any, source: str) -> dict[str, dict[str, Any]]:
    """The ``overrides`` section: sequence name -> {dotted key: value}, keys checked against :data:`CHECKS`."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise PropagateError(f"{source}: overrides must map sequence names to mappings of dotted keys, e.g. "
                             "{shooting: {propagation.n_last_frames: 10}}; got " + repr(value))
    result: dict[str, dict[str, Any]] = {}
    for name, keys in value.items():
        flat = _flatten(keys)
        for key, item in flat.items():
            where = f"{source}: overrides.{name}.{key}"
            if key == "features" or key.startswith("extractor.") or key not in CHECKS:
                what = "the extractor is built once per run" if key == "features" or key.startswith("extractor.") \
                    else "unknown key"
                raise PropagateError(f"{where}: {what}; a sequence may override "
                                     f"{', '.join(k for k in CHECKS if k != 'features')}")
            if isinstance(item, dict) and not _is_number(item.get(AT_MOST)):
                raise PropagateError(f"{where}={item!r}: give a value or {{{AT_MOST}: NUMBER}}")
        result[str(name)] = flat
    return result


def sequence_config(config: Config, name: str, source: str = "config") -> Config:
    """The config sequence ``name`` runs with: ``config`` with ``config.overrides[name]`` applied, and no overrides.

    An override value sets the key; ``{at_most: N}`` sets it to ``min(value, N)`` -- DIFT's DAVIS script gives
    ``shooting`` ``n_last_frames = min(n_last_frames, 10)``. A name without overrides gets ``config`` as it is
    (less its ``overrides``).
    """
    data = config.to_dict()
    data["overrides"] = {}
    for key, value in config.overrides.get(name, {}).items():
        if isinstance(value, dict):
            section, _, field_name = key.rpartition(".")
            current = data[section][field_name] if section else data[key]
            value = min(current, value[AT_MOST]) if _is_number(current) else value
        set_dotted(data, key, value)
    return config_from_dict(data, f"{source}: overrides.{name}" if name in config.overrides else source)


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset path: an existing file, or a name looked up in :data:`CONFIG_DIR` (``davis_sd`` or ``davis_sd.yaml``)."""
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
        data = _read_preset(path)
    parsed = parse_overrides(overrides)
    for key, value in parsed.items():
        set_dotted(data, key, value)
    return config_from_dict(data, f"{source} with overrides" if parsed else source)


def _read_preset(path: Path) -> dict[str, Any]:
    """A preset's YAML mapping; one-line errors for a file that is not UTF-8 text, not YAML or not a mapping."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PropagateError(f"{path}: not UTF-8 text (byte {exc.start}): save the preset as UTF-8") from None
    except OSError as exc:
        raise PropagateError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise PropagateError(f"{path}: not valid YAML ({problem}{where}): fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PropagateError(f"{path}: a preset must be a YAML mapping of sections (features, resize, ...), "
                             f"got {type(data).__name__}")
    return data


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
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise PropagateError(f"override {item!r}: the value is not valid YAML (quote a string, e.g. {key}='...')") from None
    return parsed


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PropagateError(f"override {key!r}: {part} is not a section")
    node[parts[-1]] = value
