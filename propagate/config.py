"""Run configuration: plain dataclasses, YAML presets shipped in ``propagate/configs/``, and ``key=value`` overrides.

A preset is a YAML file whose top-level keys are the fields of :class:`Config`; sections it leaves out keep
their defaults, which are DIFT's DAVIS settings for Stable Diffusion. Command-line flags are applied on top as
dotted overrides (``propagation.topk=10``), so every option is reachable from the CLI. Every value is checked
(type and range, declared on the fields: :mod:`propagate.options`) when a section or a :class:`Config` is made, so a
bad preset, flag or Python value fails before any work.

Presets and ``--set`` values are read as YAML with two changes that keep a hostile or mistyped file from doing
harm: a float may be written in any notation YAML 1.2 allows (``1e-3`` is a number, not the string YAML 1.1 makes
of it), and a document nested deeper than :data:`MAX_YAML_DEPTH` or expanding (through aliases) to more than
:data:`MAX_YAML_NODES` values is refused in one line.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from propagate.errors import PropagateError
from propagate.options import NON_EMPTY, Checked, Rule, above, at_least, at_most, one_of, option

# The presets are package data, so an installed wheel has them too; the repository's top-level ``configs`` is a
# symlink to this folder.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

MAX_SHORT_SIDE = 4320  # the largest resize.short_side: 8K video's
MAX_SIDE = 8192  # the largest side of resize.size (8K video is 7680x4320)
MAX_CONTEXT = 1000  # the most recent frames in the context (each holds a feature map; DIFT uses 28)
MIN_TEMPERATURE = 1e-30
_SIZE = Rule(lambda v: v is None or (len(v) == 2 and all(x >= 1 for x in v)), "null or [W, H] with two integers >= 1")
_SIZE_MAX = Rule(lambda v: v is None or all(x <= MAX_SIDE for x in v),
                 f"[W, H] with sides <= {MAX_SIDE} (8K video is 7680x4320)")
_SCREEN = Rule(lambda v: isinstance(v, bool) or v in ("auto", "on", "off"), "auto, on or off (or true/false)")


class Section(Checked):
    """A section of :class:`Config`: its keys are named ``<section>.<field>`` in messages."""


@dataclass
class ResizeConfig(Section):
    """How frames are resized before feature extraction.

    Default (DIFT): short side to ``short_side``, long side scaled with it and floored to a multiple of
    ``multiple`` (854x480 -> 832x480). ``size: [W, H]`` instead forces one size, aspect not kept (JHMDB: 320x320).
    Frames are never enlarged unless ``upscale`` is true: a native short side below ``short_side`` is kept, floored
    to a multiple of ``multiple`` (640x360 -> 608x352); ``eval davis`` sets it, as the DAVIS protocol's size.
    """

    key_prefix = "resize."

    short_side: int = option(480, at_least(1), at_most(MAX_SHORT_SIDE, " (8K video's short side)"))
    multiple: int = option(32, at_least(1), at_most(1024))
    size: list[int] | None = option(None, _SIZE, _SIZE_MAX)
    upscale: bool = False  # enlarge frames whose short side is below short_side (DIFT's DAVIS protocol does)


@dataclass
class PropagationConfig(Section):
    """Label propagation (DESIGN sections 4 and 5); defaults are DIFT's DAVIS settings for SD."""

    key_prefix = "propagation."

    # affinity exp(q.k / T) in float32: a T below about 1e-45 rounds to 0 there and 0 / 0 makes the weights NaN
    # (the object vanishes with confidence 0); 1e-30 keeps a margin and is already a hard nearest neighbour
    temperature: float = option(0.2, above(0), at_least(MIN_TEMPERATURE, " (smaller underflows float32)"))
    topk: int = option(15, at_least(1))
    n_last_frames: int = option(28, at_least(0), at_most(MAX_CONTEXT, " (each frame's features stay in memory)"))
    radius: int = option(15, at_least(0))
    # square (|dy|<=r and |dx|<=r), disk (dy^2+dx^2 <= r^2), open_disk (< r^2, CRW) or none
    window: str = option("square", one_of("square", "disk", "open_disk", "none"))
    window_first: bool = True  # restrict frame 0's keys to the window as well (DIFT/DINO yes, CRW no)
    # first: the queue starts empty (frame 0 alone); copies: full of frame 0 (CRW)
    queue_init: str = option("first", one_of("first", "copies"))
    # ties: keep every affinity >= the k-th (DINO); exact: exactly k (torch.topk, CRW)
    topk_rule: str = option("ties", one_of("ties", "exact"))
    # first-frame mask to the grid: nearest (DINO) or area (soft fractions)
    label_downsample: str = option("nearest", one_of("nearest", "area"))
    minmax_norm: bool = True  # per-channel min-max normalisation of upsampled labels before argmax (DINO)
    # bf16 pre-screening of affinities with an exact fp32 re-check: auto, on or off (YAML reads on/off as true/false)
    screen: str | bool = option("auto", _SCREEN)
    # the affinity itself: fp32 (exact), or auto: fp16 on CUDA, bf16 on CPUs with native bf16 (AMX / AVX512-BF16),
    # fp32 elsewhere (approximate: some top-k neighbours change), or bf16 / fp16
    affinity_dtype: str = option("fp32", one_of("fp32", "auto", "bf16", "fp16"))
    # keyframes in context: global (every keyframe reached), or segment: a frame between two keyframes draws only on
    # those two and the frames between them (a correction changes only its segments)
    scope: str = option("global", one_of("global", "segment"))
    reuse: bool = False  # sessions keep each frame's top-k candidates, so a correction costs a gather, not an affinity
    device: str = option("auto", NON_EMPTY)  # where propagation runs: auto (cuda if available), cpu, cuda

    def check(self) -> None:
        super().check()
        if self.window == "open_disk" and self.radius == 0:
            raise PropagateError("propagation.radius=0 is not valid with propagation.window=open_disk: give an "
                                 "integer >= 1 (an open disk of radius 0 holds no key, so every label would vanish)")


@dataclass
class KeypointConfig(Section):
    """Keypoint labels and decoding (CRW protocol, DESIGN section 5)."""

    key_prefix = "keypoints."

    # Gaussian heatmap sigma in grid cells: below 0.01 the map is its one peak cell whatever sigma is (and far
    # below, sigma^2 underflows to 0: a NaN map); above 100 it is wider than any grid and its (6 sigma)^2 cells
    # are allocated
    sigma: float = option(0.5, above(0), at_least(0.01), at_most(100))
    decode_topk: int = option(3, at_least(1))  # cells averaged per joint when decoding
    # pixel <-> grid mapping: centre (pixel-centre aligned) or crw (u = x * w / W)
    cell_convention: str = option("centre", one_of("centre", "crw"))


@dataclass
class KeyframeConfig(Section):
    """How annotated keyframes are propagated (DESIGN section 9; :mod:`propagate.session`).

    ``direction``: ``auto`` (forward for one keyframe on frame 0, else both), ``forward``, ``backward`` or ``both``.
    ``blend``: how a frame between two keyframes mixes the two directions' soft labels: ``linear`` (by temporal
    distance to each keyframe) or ``nearest`` (the nearer keyframe's direction only).
    """

    key_prefix = "keyframes."

    direction: str = option("auto", one_of("auto", "forward", "backward", "both"))
    blend: str = option("linear", one_of("linear", "nearest"))


@dataclass
class PostprocessConfig(Section):
    """Clean-up of propagated masks (never of keyframes): off (0) in the paper presets.

    ``min_area``: per object, connected regions smaller than this many native pixels are removed from propagated
    masks (the specks a drifting label leaves; :func:`propagate.labels.remove_small_regions`).
    """

    key_prefix = "postprocess."

    min_area: int = option(0, at_least(0))


@dataclass
class PckConfig(Section):
    """PCK scoring of keypoints (:mod:`propagate.pck`)."""

    key_prefix = "pck."

    # a joint with no prediction: wrong (counted a miss, kept in the box) or drop (CRW)
    lost_joints: str = option("wrong", one_of("wrong", "drop"))


@dataclass
class MatchConfig(Section):
    """Matching one image to another (``propagate match``, ``edit``, ``eval spair|hpatches``;
    :mod:`propagate.correspond`).

    Defaults are DIFT's SPair-71k settings; the ``hpatches_*`` presets set the geometric ones.
    """

    key_prefix = "match."

    # [W, H] every image is resized to for extraction (DIFT's img_size); null: its own size
    size: list[int] | None = option(None, _SIZE, _SIZE_MAX)
    # features to the image's size before matching (DIFT), or none (argmax over cells)
    upsample: str = option("bilinear", one_of("bilinear", "none"))
    prompt: str = ""  # DIFT-SD prompt template; {category} is the image's category (SPair: "a photo of a {category}")
    # mutual nearest neighbours of keypoint descriptors: cosine or l2 (DIFT's ADM on HPatches)
    metric: str = option("cosine", one_of("cosine", "l2"))
    homography: str = option("lmeds", one_of("lmeds", "ransac"))  # OpenCV's robust fit of keypoint matches
    reproj_threshold: float = option(3.0, above(0))  # RANSAC inlier distance in pixels (keypoint matches)
    # keypoints per image (OpenCV SIFT detector, no weights; DIFT used 1k SuperPoint)
    keypoints: int = option(1000, at_least(4), at_most(100000))
    edit_samples: int = option(1000, at_least(4), at_most(100000))  # pixels sampled inside an edit's alpha
    edit_threshold: float = option(5.0, above(0))  # RANSAC inlier distance in pixels of an edit's homography
    smooth_frames: int = option(2, at_least(0), at_most(1000))  # video edits: corners averaged over +-this many frames
    seed: int = option(0, at_least(0))  # which pixels of the edit are sampled


@dataclass
class Config(Checked):
    """Everything one run needs besides its inputs.

    ``overrides`` maps a sequence (or video) name to dotted keys whose values differ for it, applied by the
    dataset protocols (:func:`sequence_config`): ``{"shooting": {"propagation.n_last_frames": {"at_most": 10}}}``.
    """

    features: str = option("dift_sd", NON_EMPTY)
    extractor: dict[str, Any] = field(default_factory=dict)  # checked by the extractor's options (features/)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    pck: PckConfig = field(default_factory=PckConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    batch_frames: int = option(4, at_least(1))  # frames extracted together (each with its ensemble copies)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per sequence: {dotted key: value}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type[Section]] = {"resize": ResizeConfig, "propagation": PropagationConfig,
                                       "keypoints": KeypointConfig, "keyframes": KeyframeConfig,
                                       "postprocess": PostprocessConfig, "pck": PckConfig,
                                       "match": MatchConfig}


def _declared_keys() -> dict[str, tuple[object, tuple[Rule, ...]]]:
    """Every dotted key of :class:`Config` (sections' fields, and the plain top-level ones) -> (type, rules)."""
    keys: dict[str, tuple[object, tuple[Rule, ...]]] = {}
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in _SECTIONS:
            section = _SECTIONS[f.name]
            section_hints = typing.get_type_hints(section)
            for g in dataclasses.fields(section):
                keys[f"{f.name}.{g.name}"] = (section_hints[g.name], tuple(g.metadata.get("rules", ())))
        elif f.name not in ("extractor", "overrides"):
            keys[f.name] = (hints[f.name], tuple(f.metadata.get("rules", ())))
    return keys


# Every key a preset, a flag or a per-sequence override may set, with its type and rules (declared on the fields).
CHECKS: dict[str, tuple[object, tuple[Rule, ...]]] = _declared_keys()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from nested dicts; unknown keys and bad values (:data:`CHECKS`) are an error naming
    ``source``."""
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
                    f"{source}: unknown key(s) {', '.join(f'{key}.{b}' for b in bad)}; "
                    f"known: {', '.join(sorted(names))}"
                )
            kwargs[key] = _made(cls, value, source)
        elif key == "extractor":
            if not isinstance(value, dict):
                raise PropagateError(f"{source}: extractor must be a mapping, got {value!r}")
            kwargs[key] = dict(value)
        elif key == "overrides":
            kwargs[key] = _read_overrides(value, source)
        else:
            kwargs[key] = value
    config = _made(Config, kwargs, source)
    for name in config.overrides:
        sequence_config(config, name, source)  # every override is a known key with a valid value
    return config


def _made(cls: type[Checked], values: dict[str, Any], source: str) -> Any:  # Any: an instance of cls
    """``cls(**values)``; the checker's error names ``source``."""
    try:
        return cls(**values)
    except PropagateError as exc:
        raise PropagateError(f"{source}: {exc}") from None


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
    """A preset path: an existing file, or a name looked up in :data:`CONFIG_DIR` (``davis_sd`` or
    ``davis_sd.yaml``)."""
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


# ---------------------------------------------------------------------------------------------- reading YAML

MAX_YAML_DEPTH = 64  # nesting of mappings and lists (a preset needs 3)
MAX_YAML_NODES = 100_000  # values in a document once its aliases are expanded (a preset holds about 50)

# YAML 1.2's floats: YAML 1.1 (PyYAML) wants a dot, so it reads 1e-3 as the string '1e-3'.
_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)


class YamlTooLarge(yaml.YAMLError):
    """A document nested too deeply, or whose aliases expand to too many values."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats, a bound on nesting and a bound on alias expansion."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:  # type: ignore[override]
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise YamlTooLarge(f"is nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> yaml.Node | None:  # type: ignore[override]
        node = super().compose_document()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise YamlTooLarge(f"expands (through its aliases) to more than {MAX_YAML_NODES} values")
        return node


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values in ``node`` with every alias expanded (each node counted once per reference; memoised by identity,
    so a billion-laughs document is measured without being expanded). Depth is already bounded."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = min(size, MAX_YAML_NODES + 1)
    return sizes[id(node)]


def read_yaml(text: str) -> Any:  # Any: whatever the document holds
    """The YAML document ``text`` (safe tags only); :class:`YamlTooLarge` beyond the bounds, another
    ``yaml.YAMLError`` if it is not YAML."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _read_preset(path: Path) -> dict[str, Any]:
    """A preset's YAML mapping; one-line errors for a file that is not UTF-8 text, not YAML or not a mapping."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PropagateError(f"{path}: not UTF-8 text (byte {exc.start}): save the preset as UTF-8") from None
    except OSError as exc:
        raise PropagateError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = read_yaml(text)
    except YamlTooLarge as exc:
        raise PropagateError(f"{path}: the YAML {exc.problem}, far beyond a preset (3 levels, about 50 values): "
                             "fix the file") from None
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
            parsed[key.strip()] = read_yaml(raw) if raw.strip() else ""
        except YamlTooLarge as exc:
            raise PropagateError(f"override {key.strip()!r}: the value {exc.problem}") from None
        except yaml.YAMLError:
            raise PropagateError(f"override {item!r}: the value is not valid YAML (quote a string, "
                                 f"e.g. {key}='...')") from None
    return parsed


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) > MAX_YAML_DEPTH:
        raise PropagateError(f"override {key[:60]!r}...: more than {MAX_YAML_DEPTH} dotted parts; no key is that deep")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PropagateError(f"override {key!r}: {part} is not a section")
    node[parts[-1]] = value
