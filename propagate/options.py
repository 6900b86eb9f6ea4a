"""The one checker of option values: every options dataclass declares what each field accepts, and checks itself.

A field is declared with :func:`option` (its default and the rules of its range); ``__post_init__`` of
:class:`Checked` tests every field's type (from its annotation) and then its rules, so a config section, an
extractor's options or a value given straight from Python are checked the same way, before any work starts. The
first value that fails is one :class:`~propagate.errors.PropagateError` line naming the dotted key, the value and
what to give: ``propagation.topk=0 is not valid: give an integer >= 1``.

Types: an ``int`` is not a ``bool`` (YAML's ``true``), a ``float`` is any finite int or float, a list is a list or
a tuple (not a string), ``X | None`` also accepts null. A rule's words may hold ``{type}``, which becomes the words
of the field's type (``{type} >= 1`` -> ``an integer >= 1``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Union

from propagate.errors import PropagateError


@dataclass(frozen=True)
class Rule:
    """A test a value of the right type must pass, and the words that tell the user what to give."""

    accepts: Callable[[Any], bool]
    words: str  # may hold {type}


def at_least(low: float, why: str = "") -> Rule:
    return Rule(lambda v: v >= low, f"{{type}} >= {low:g}{why}")


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"{{type}} > {low:g}")


def at_most(high: float, why: str = "") -> Rule:
    return Rule(lambda v: v <= high, f"{{type}} <= {high:g}{why}")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, ", ".join(choices[:-1]) + f" or {choices[-1]}")


NON_EMPTY = Rule(lambda v: v != "", "a non-empty string")


def option(default: object = dataclasses.MISSING, *rules: Rule,
           factory: Callable[[], object] | None = None) -> Any:  # Any: it stands for the field's value
    """A dataclass field with its ``default`` (or ``factory``) and the rules its values must pass."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"rules": rules})
    return dataclasses.field(default=default, metadata={"rules": rules})


# ---------------------------------------------------------------------------------------------- types

_TYPE_WORDS: dict[object, tuple[str, str]] = {  # type -> how an error message names one value, and a list of them
    int: ("an integer", "integers"), float: ("a finite number", "finite numbers"), str: ("a string", "strings"),
    bool: ("true or false", "booleans"), type(None): ("null", "nulls"), Path: ("a path", "paths"),
}


def describe_type(hint: object) -> str:
    """Words for a type hint, for error messages: ``int | None`` -> "an integer or null"."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if origin in (Sequence, list, tuple):
        return f"a list of {_TYPE_WORDS[typing.get_args(hint)[0]][1]}"
    if origin is dict or hint is dict:
        return "a mapping"
    if hint in _TYPE_WORDS:
        return _TYPE_WORDS[hint][0]
    return f"a {getattr(hint, '__name__', hint)}"


def fits_type(value: object, hint: object) -> bool:
    """Whether ``value`` (as YAML or Python gives it) is of type ``hint``. An int is a float, but a bool is neither
    an int nor a float; floats must be finite; a sequence is a list or a tuple (not a string)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(fits_type(value, arg) for arg in typing.get_args(hint))
    if origin in (Sequence, list, tuple):
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(fits_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the checker


@functools.lru_cache(maxsize=None)
def _declared(cls: type) -> tuple[tuple[str, object, tuple[Rule, ...]], ...]:
    """``(name, type hint, rules)`` of every field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name], tuple(f.metadata.get("rules", ()))) for f in dataclasses.fields(cls))


def failure(value: object, hint: object, rules: Sequence[Rule]) -> str | None:
    """What to give instead of ``value``, or None if it is of type ``hint`` and passes every rule. A value of the
    wrong type is told the words of the first rule (or of the type, if the field has no rule)."""
    if not fits_type(value, hint):
        return rules[0].words.format(type=describe_type(hint)) if rules else describe_type(hint)
    for rule in rules:
        if not rule.accepts(value):
            return rule.words.format(type=describe_type(hint))
    return None


def check_value(key: str, value: object, hint: object, rules: Sequence[Rule], owner: str = "") -> None:
    """A PropagateError ``KEY=VALUE is not valid[ OWNER]: give WHAT`` if ``value`` fails ``hint`` or ``rules``."""
    what = failure(value, hint, rules)
    if what is not None:
        raise PropagateError(f"{key}={value!r} is not valid{owner}: give {what}")


def check_field(cls: type, name: str, value: object) -> None:
    """Check ``value`` as field ``name`` of the :class:`Checked` dataclass ``cls`` would be checked (for functions
    that take one option as an argument)."""
    for field_name, hint, rules in _declared(cls):
        if field_name == name:
            check_value(f"{cls.key_prefix}{name}", value, hint, rules, cls.key_owner)
            return
    raise KeyError(name)


def check_fields(obj: object, prefix: str | None = None, owner: str | None = None) -> None:
    """Check every field of the dataclass instance ``obj``; the first bad one is raised. Keys are named with the
    class's ``key_prefix`` and ``key_owner`` (:class:`Checked`) unless ``prefix`` or ``owner`` is given."""
    cls = type(obj)
    prefix = getattr(cls, "key_prefix", "") if prefix is None else prefix
    owner = getattr(cls, "key_owner", "") if owner is None else owner
    for name, hint, rules in _declared(cls):
        check_value(f"{prefix}{name}", getattr(obj, name), hint, rules, owner)


class Checked:
    """Base of the options dataclasses: ``__post_init__`` checks every field (:meth:`check`).

    ``key_prefix`` is how a key is named in messages (``propagation.``, ``extractor.``); ``key_owner`` is added
    after "is not valid" (`` for features 'baseline'``).
    """

    key_prefix: ClassVar[str] = ""
    key_owner: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every field against its declaration (a subclass adds rules that tie fields together). Called when the
        dataclass is made; call it again after changing a field of a mutable one."""
        check_fields(self)


__all__ = ["NON_EMPTY", "Checked", "Rule", "above", "at_least", "at_most", "check_field", "check_fields",
           "check_value", "describe_type", "failure", "fits_type", "one_of", "option"]
