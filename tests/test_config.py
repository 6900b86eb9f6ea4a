"""Presets shipped in the package, overrides, and the one-line errors for bad presets and bad values."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from pathlib import Path

import pytest

import propagate
from propagate.config import (
    CHECKS,
    CONFIG_DIR,
    Config,
    config_from_dict,
    load_config,
    parse_overrides,
    resolve_preset,
    sequence_config,
)
from propagate.errors import PropagateError

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_presets_live_in_the_package():
    assert CONFIG_DIR == Path(propagate.__file__).resolve().parent / "configs"
    assert {"davis_sd", "davis_adm", "davis_baseline", "jhmdb_sd", "jhmdb_adm", "jhmdb_baseline"} <= set(PRESETS)


def test_top_level_configs_is_a_relative_symlink_to_the_package_presets():
    top = REPO / "configs"
    if not (REPO / "setup.cfg").is_file():
        pytest.skip("not run from a source checkout")
    if sys.platform == "win32" and not top.is_symlink():
        pytest.skip("git checked the symlink out as a file (Windows without core.symlinks)")
    assert top.is_symlink() and os.readlink(top) == os.path.join("propagate", "configs")
    assert sorted(p.stem for p in top.glob("*.yaml")) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_passes_the_checks(name):
    config = load_config(name)
    assert isinstance(config, Config)
    assert resolve_preset(name) == resolve_preset(f"{name}.yaml") == CONFIG_DIR / f"{name}.yaml"


def test_preset_values_are_read_as_written():
    sd, jhmdb = load_config("davis_sd"), load_config("jhmdb_baseline")
    assert (sd.features, sd.extractor["t"], sd.propagation.temperature, sd.propagation.topk, sd.batch_frames) == (
        "dift_sd", 51, 0.2, 15, 2)
    assert jhmdb.resize.size == [320, 320] and jhmdb.propagation.window == "open_disk"
    assert jhmdb.propagation.screen == "off"


def test_every_field_has_a_check():
    from propagate.config import _SECTIONS

    # overrides: checked by key
    fields = {f.name for f in dataclasses.fields(Config)} - set(_SECTIONS) - {"extractor", "overrides"}
    for section, cls in _SECTIONS.items():
        fields |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
    assert set(CHECKS) == fields


def test_overrides_apply_and_parse_yaml():
    config = load_config("davis_baseline", ["propagation.topk=10", "resize.size=[96,64]", "propagation.screen=off"])
    assert config.propagation.topk == 10 and config.resize.size == [96, 64]
    assert config.propagation.screen is False  # YAML's off; the propagator takes it as "off"
    assert load_config(None, {"propagation.temperature": 1}).propagation.temperature == 1
    assert load_config("davis_sd", ["propagation.n_last_frames=0", "propagation.radius=0"]).propagation.radius == 0
    assert parse_overrides(["features="]) == {"features": ""}


# (override, dotted key, value as the message shows it, words saying what to give)
BAD_VALUES = [
    ("propagation.topk=abc", "propagation.topk", "'abc'", "an integer >= 1"),
    ("propagation.topk=0", "propagation.topk", "0", "an integer >= 1"),
    ("propagation.topk=2.5", "propagation.topk", "2.5", "an integer >= 1"),
    ("propagation.topk=true", "propagation.topk", "True", "an integer >= 1"),  # a bool is not an int here
    ("propagation.temperature=.nan", "propagation.temperature", "nan", "a finite number > 0"),
    ("propagation.temperature=.inf", "propagation.temperature", "inf", "a finite number > 0"),
    ("propagation.temperature=0", "propagation.temperature", "0", "a finite number > 0"),
    ("propagation.temperature=-0.1", "propagation.temperature", "-0.1", "a finite number > 0"),
    ("propagation.temperature=nan", "propagation.temperature", "'nan'", "a finite number > 0"),
    ("propagation.temperature=false", "propagation.temperature", "False", "a finite number > 0"),
    ("propagation.n_last_frames=-1", "propagation.n_last_frames", "-1", "an integer >= 0"),
    ("propagation.radius=-2", "propagation.radius", "-2", "an integer >= 0"),
    ("propagation.radius=1.5", "propagation.radius", "1.5", "an integer >= 0"),
    ("propagation.window=circle", "propagation.window", "'circle'", "square, disk, open_disk or none"),
    ("propagation.queue_init=zeros", "propagation.queue_init", "'zeros'", "first or copies"),
    ("propagation.topk_rule=some", "propagation.topk_rule", "'some'", "ties or exact"),
    ("pck.lost_joints=skip", "pck.lost_joints", "'skip'", "wrong or drop"),
    ("propagation.window_first=1", "propagation.window_first", "1", "true or false"),
    ("propagation.label_downsample=bilinear", "propagation.label_downsample", "'bilinear'", "nearest or area"),
    ("propagation.minmax_norm=maybe", "propagation.minmax_norm", "'maybe'", "true or false"),
    ("propagation.screen=sometimes", "propagation.screen", "'sometimes'", "auto, on or off (or true/false)"),
    ("propagation.screen=1", "propagation.screen", "1", "auto, on or off (or true/false)"),
    ("propagation.device=0", "propagation.device", "0", "a non-empty string"),
    ("resize.short_side=0", "resize.short_side", "0", "an integer >= 1"),
    ("resize.short_side=480.0", "resize.short_side", "480.0", "an integer >= 1"),
    ("resize.multiple=0", "resize.multiple", "0", "an integer >= 1"),
    ("resize.size=[0,0]", "resize.size", "[0, 0]", "null or [W, H] with two integers >= 1"),
    ("resize.size=[320]", "resize.size", "[320]", "null or [W, H] with two integers >= 1"),
    ("resize.size=[320,true]", "resize.size", "[320, True]", "null or [W, H] with two integers >= 1"),
    ("resize.size=320x320", "resize.size", "'320x320'", "null or [W, H] with two integers >= 1"),
    ("keypoints.sigma=0", "keypoints.sigma", "0", "a finite number > 0"),
    ("keypoints.sigma=.inf", "keypoints.sigma", "inf", "a finite number > 0"),
    ("keypoints.decode_topk=0", "keypoints.decode_topk", "0", "an integer >= 1"),
    ("keypoints.cell_convention=corner", "keypoints.cell_convention", "'corner'", "centre or crw"),
    ("batch_frames=0", "batch_frames", "0", "an integer >= 1"),
    ("batch_frames=yes", "batch_frames", "True", "an integer >= 1"),
    ("features=", "features", "''", "a non-empty string"),
]


@pytest.mark.parametrize("override,key,shown,what", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_one_line_naming_key_value_and_what_to_give(override, key, shown, what):
    with pytest.raises(PropagateError) as err:
        load_config("davis_sd", [override])
    message = str(err.value)
    assert f"{key}={shown} is not valid: give {what}" in message
    assert "davis_sd.yaml with overrides" in message and "\n" not in message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_temperature_from_python(value):
    with pytest.raises(PropagateError,
                       match=r"propagation.temperature=-?(nan|inf) is not valid: give a finite number > 0"):
        load_config(None, {"propagation.temperature": value})


def test_accepted_edge_values():
    config = load_config(None, {
        "propagation.screen": True, "propagation.temperature": 1, "resize.size": None, "resize.multiple": 1,
        "propagation.window": "none", "propagation.label_downsample": "area", "keypoints.cell_convention": "crw",
        "propagation.device": "cuda:1", "batch_frames": 1,
    })
    assert config.propagation.screen is True and config.resize.size is None
    assert load_config(None, {"resize.size": (8, 8)}).resize.size == (8, 8)


def test_config_from_dict_checks_too():
    """The CLI builds its config with config_from_dict: the same checks, naming the source it gives."""
    with pytest.raises(PropagateError, match=r"^davis_sd: keypoints.sigma=-1 is not valid: give a finite number > 0$"):
        config_from_dict({"keypoints": {"sigma": -1}}, "davis_sd")


def test_bad_value_in_a_preset_file_names_the_file(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("features: baseline\npropagation:\n  topk: many\n")
    with pytest.raises(PropagateError, match=r"mine.yaml: propagation.topk='many' is not valid: give an integer >= 1$"):
        load_config(preset)


def test_preset_not_utf8(tmp_path):
    preset = tmp_path / "latin1.yaml"
    preset.write_bytes("# caf\u00e9 settings\nfeatures: baseline\n".encode("latin-1"))
    with pytest.raises(PropagateError,
                       match=r"latin1.yaml: not UTF-8 text \(byte 5\): save the preset as UTF-8") as err:
        load_config(preset)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,problem", [
    ("propagation: [1, 2\n", "line 2"),
    ("features: baseline\n  resize: {short_side: 64\n", "line 2"),
    ("features: baseline\n\tresize: 3\n", "line 2"),
])
def test_preset_not_yaml(tmp_path, text, problem):
    preset = tmp_path / "broken.yaml"
    preset.write_text(text)
    with pytest.raises(PropagateError, match=r"broken.yaml: not valid YAML \(.*\): fix the file") as err:
        load_config(preset)
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_preset_not_a_mapping_and_unknown_keys(tmp_path):
    (tmp_path / "list.yaml").write_text("- features\n- baseline\n")
    with pytest.raises(PropagateError, match="list.yaml: a preset must be a YAML mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_config(tmp_path / "empty.yaml") == Config()
    with pytest.raises(PropagateError, match=r"unknown key\(s\) propagation.top_k"):
        load_config("davis_sd", ["propagation.top_k=3"])
    with pytest.raises(PropagateError, match="no preset 'davis_xl': give a YAML file or one of: davis_adm"):
        load_config("davis_xl")


def test_override_syntax_errors():
    with pytest.raises(PropagateError, match=r"override 'propagation.topk' is not KEY=VALUE"):
        parse_overrides(["propagation.topk"])
    with pytest.raises(PropagateError, match=r"override 'resize.size=\[1,': the value is not valid YAML") as err:
        parse_overrides(["resize.size=[1,"])
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------- per-sequence overrides


def test_paper_presets_pin_fp32_and_fast_presets_do_not():
    for name in ("davis_sd", "davis_adm", "jhmdb_sd", "jhmdb_adm"):
        assert load_config(name).extractor["dtype"] == "fp32"
        if name.startswith("davis"):
            fast = load_config(f"{name}_fast")
            assert fast.extractor["dtype"] == "auto"
            assert {**fast.to_dict(), "extractor": {}} == {**load_config(name).to_dict(), "extractor": {}}


def test_jhmdb_presets_are_crw_mode():
    for name in ("jhmdb_sd", "jhmdb_adm", "jhmdb_baseline"):
        c = load_config(name)
        assert (c.propagation.queue_init, c.propagation.topk_rule, c.propagation.window, c.propagation.window_first,
                c.keypoints.cell_convention, c.pck.lost_joints) == (
            "copies", "exact", "open_disk", False, "crw", "drop")


def test_shooting_override_caps_the_context_as_dift_does():
    config = load_config("davis_sd")
    assert config.overrides == {"shooting": {"propagation.n_last_frames": {"at_most": 10}}}
    shooting = sequence_config(config, "shooting")
    assert shooting.propagation.n_last_frames == 10 and shooting.overrides == {}
    assert sequence_config(config, "bike-packing").propagation.n_last_frames == 28
    # DIFT: "if args.n_last_frames > 10: args.n_last_frames = 10" -- a smaller context is kept
    small = load_config("davis_sd", ["propagation.n_last_frames=7"])
    assert sequence_config(small, "shooting").propagation.n_last_frames == 7
    # nested (as --set writes it) and dotted forms are the same; a plain value sets the key
    nested = load_config("davis_baseline", ["overrides.dogs.propagation.topk=5"])
    assert nested.overrides == {"dogs": {"propagation.topk": 5}}
    assert sequence_config(nested, "dogs").propagation.topk == 5


@pytest.mark.parametrize("overrides, words", [
    ({"dogs": {"propagation.topkk": 5}}, "overrides.dogs.propagation.topkk: unknown key"),
    ({"dogs": {"extractor.t": 5}}, "the extractor is built once per run"),
    ({"dogs": {"propagation.topk": 0}}, "propagation.topk=0 is not valid"),
    ({"dogs": {"propagation.topk": {"at_most": "x"}}}, "give a value or {at_most: NUMBER}"),
    ({"dogs": 3}, "overrides must map sequence names"),
])
def test_bad_overrides_are_one_line_errors(overrides, words):
    with pytest.raises(PropagateError) as err:
        config_from_dict({"overrides": overrides}, "preset.yaml")
    assert words in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ declared ranges


def _numeric_fields(cls: type) -> list[tuple[str, tuple]]:
    """``(name, rules)`` of every int, float or list-of-int field of dataclass ``cls``."""
    import typing

    hints = typing.get_type_hints(cls)
    numeric = {int, float, typing.Sequence[int], list[int], list[int] | None}
    return [(f.name, tuple(f.metadata.get("rules", ()))) for f in dataclasses.fields(cls) if hints[f.name] in numeric]


def test_every_numeric_option_declares_a_range():
    """Zero bins, zero scales, a zero size...: every number a user can set has a declared range (issue 22), so
    the one checker refuses a value that would divide by zero, underflow or allocate without bound."""
    from propagate.config import _SECTIONS
    from propagate.features import EXTRACTORS, extractor_class

    classes = [Config, *_SECTIONS.values(), *(extractor_class(name).options_type for name in EXTRACTORS)]
    missing = [f"{cls.__name__}.{name}" for cls in classes for name, rules in _numeric_fields(cls) if not rules]
    assert not missing, f"numeric options without a declared range: {missing}"
    assert len([1 for cls in classes for _ in _numeric_fields(cls)]) >= 30  # the walk saw the fields


@pytest.mark.parametrize("cls, field, value, words", [
    ("PropagationConfig", "topk", 0, "propagation.topk=0 is not valid: give an integer >= 1"),
    ("PropagationConfig", "temperature", 1e-300,
     "propagation.temperature=1e-300 is not valid: give a finite number >= 1e-30"),
    ("KeypointConfig", "sigma", 1e-200, "keypoints.sigma=1e-200 is not valid: give a finite number >= 0.01"),
    ("ResizeConfig", "short_side", 10**6, "resize.short_side=1000000 is not valid: give an integer <= 4320"),
])
def test_python_callers_get_the_same_checks(cls, field, value, words):
    """A section made in Python checks itself (no config file involved), and a field changed after that is caught
    when the propagator (or point tracker) starts: the same checker, the same words."""
    import propagate.config as config_module
    from propagate.propagation import LabelPropagator

    section = getattr(config_module, cls)
    with pytest.raises(PropagateError, match=f"^{re.escape(words)}"):
        section(**{field: value})
    if cls == "PropagationConfig":
        made = section()
        setattr(made, field, value)
        with pytest.raises(PropagateError, match=f"^{re.escape(words)}"):
            LabelPropagator(made, device="cpu")


def test_an_open_disk_of_radius_0_is_refused_but_a_square_one_is_not():
    """``open_disk`` keeps keys with dy^2 + dx^2 < r^2: at radius 0 none, so every label would vanish."""
    assert load_config(None, ["propagation.radius=0"]).propagation.radius == 0
    with pytest.raises(PropagateError, match="propagation.radius=0 is not valid with propagation.window=open_disk"):
        load_config(None, ["propagation.radius=0", "propagation.window=open_disk"])


@pytest.mark.parametrize("text, words", [
    ("features: " + "[" * 100 + "]" * 100, "nested deeper than 64 levels"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{k}: &{k} [{', '.join(['*' + p] * 10)}]\n" for p, k in zip("abcde", "bcdef")),
     "expands (through its aliases) to more than 100000 values"),
])
def test_preset_too_deep_or_too_large_is_one_line(tmp_path, text, words):
    preset = tmp_path / "big.yaml"
    preset.write_text(text)
    with pytest.raises(PropagateError, match=re.escape(words)) as err:
        load_config(preset)
    assert "\n" not in str(err.value)


def test_a_preset_with_a_few_aliases_still_loads(tmp_path):
    preset = tmp_path / "anchors.yaml"
    preset.write_text("features: baseline\nresize: &r {short_side: 64, multiple: 8}\noverrides:\n  dogs:\n"
                      "    resize: *r\n")
    assert load_config(preset).resize.short_side == 64
