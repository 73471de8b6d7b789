"""Typed configuration from YAML and dotted command-line overrides, for any dataclass.

A config is a tree of dataclasses (a run's is `runs/config.py: RunConfig`).
Plain data (parsed YAML, overrides) becomes that tree through `from_dict`,
which checks every key and every value's type against the annotations, so a
typo fails at once, naming the key and the closest valid one:

    unknown config key 'train.max_step'; did you mean 'train.max_steps'?

Numbers must be finite: `nan` or `inf` in a config is always a mistake, and
one that would otherwise surface steps later as a NaN loss (or be saved).
A section whose class is given a preset lookup (`presets=`; a run's model
section: runs/config.py) may start from `preset: NAME` and override some fields.

Overrides use dotted keys, `train.lr=3e-4`; their values are parsed as YAML
scalars. `field_docs` reads each field's description from the class
docstring, so `--help` texts are the documentation.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from llmscratch.errors import LLMScratchError
from llmscratch.io import parse_yaml, read_text


def _suggest(key: str, valid: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


# Whole numbers in a config become tensor sizes, counts and seeds: each must fit the 64-bit
# integers of torch and numpy (Python's own ints have no limit, so 10**20 would only fail
# later, with an OverflowError deep inside a library).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def check_seed(seed: Any, name: str = "seed") -> int:
    """`seed`, if it is a whole number from 0 to 2^63 - 1, which every random generator takes.

    torch.manual_seed takes -2^63 .. 2^64 - 1 (a negative seed wraps around, so -1 and
    2^64 - 1 would be one stream), numpy's generators no negative seed at all; 0 .. 2^63 - 1
    is one rule for both, and it fits a 64-bit integer.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= INT_MAX:
        raise LLMScratchError(f"{name} must be a whole number from 0 to 2^63 - 1 "
                              f"({INT_MAX}), got {seed!r}")
    return seed


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotation `kind`; int is accepted where float is.

    A union (`float | None`, `str | list[str]`) takes what any of its members takes.
    """
    if isinstance(value, int) and not isinstance(value, bool) and not (
            INT_MIN <= value <= INT_MAX):
        raise LLMScratchError(f"{key} must be a whole number of 64 bits (-2^63 to 2^63 - 1), "
                              f"got one of {value.bit_length()} bits")
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(kind), key)
    if typing.get_origin(kind) is list:
        (item_kind,) = typing.get_args(kind)
        if isinstance(value, (str, int, float)):  # a lone value where a list is expected
            value = [value]
        if not isinstance(value, list):
            raise LLMScratchError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item_kind, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise LLMScratchError(f"{key} must be a finite number, got {value}")
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LLMScratchError(
            f"{key} must be of type {kind.__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def _coerce_union(value: Any, kinds: tuple, key: str) -> Any:
    if value is None and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is not type(None):
            try:
                return _coerce(value, kind, key)
            except LLMScratchError:
                continue
    names = " or ".join("none" if k is type(None) else getattr(k, "__name__", str(k))
                        for k in kinds)
    raise LLMScratchError(f"{key} must be {names}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type, data: Any, prefix: str = "",
              presets: dict[type, Callable[[str], Any]] | None = None) -> Any:
    """Build dataclass `cls` from a dict, checking every key and type (nested sections too).

    `presets` maps a section's class to a function from a preset's name to an instance:
    such a section may say `preset: NAME`, and its other keys replace the preset's fields."""
    if not isinstance(data, dict):
        raise LLMScratchError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys to "
                              f"values, got {data!r}")
    presets = presets or {}
    if "preset" in data and cls in presets:
        data = dict(data)
        base = dataclasses.asdict(presets[cls](str(data.pop("preset"))))
        data = {**base, **data}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            renamed = getattr(cls, "RENAMED", {}).get(key)  # a key that moved elsewhere
            if renamed:
                raise LLMScratchError(f"config key '{prefix}{key}' is now '{renamed}'")
            raise LLMScratchError(
                f"unknown config key '{prefix}{key}'{_suggest(key, names, prefix)}"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, {} if value is None else value, f"{prefix}{key}.",
                                    presets)
        else:
            kwargs[key] = _coerce(value, kind, f"{prefix}{key}")
    return cls(**kwargs)


def check_fields(config: Any, prefix: str = "") -> None:
    """Check every field of dataclass `config` against its annotation, as `from_dict` does
    (ints stand for floats, a lone value for a list), in place.

    For a dataclass built from other data than a config file (a Hugging Face
    config.json, a checkpoint): its `__post_init__` calls this first, so that a
    string or a 10**20 is one line instead of a traceback from deep in torch.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not dataclasses.is_dataclass(hints[f.name]):
            object.__setattr__(config, f.name, _coerce(value, hints[f.name], prefix + f.name))


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: Sequence[str], sections: Sequence[str]) -> dict:
    """Set dotted keys (`train.lr=3e-4`) in a nested dict, parsing values as YAML scalars."""
    for section, values in data.items():
        if values is not None and not isinstance(values, dict):
            raise LLMScratchError(f"config section {section!r} must be a mapping of keys to "
                                  f"values, got {values!r}")
    data = {section: dict(values or {}) for section, values in data.items()}
    for item in overrides:
        if "=" not in item:
            raise LLMScratchError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or parts[0] not in sections:
            raise LLMScratchError(
                f"unknown config key '{dotted}'{_suggest(parts[0], sections)} "
                f"(keys look like {'|'.join(sections)}.name)"
            )
        value = parse_yaml(raw, f"the value of override {item!r} (quote a string, or give a "
                                f"number, true/false or a [list])") if raw else ""
        data.setdefault(parts[0], {})[parts[1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; every way it can be wrong is one line."""
    path = Path(path)
    data = parse_yaml(read_text(path, "config file"), f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LLMScratchError(f"config file {path} must hold a mapping of sections, "
                              f"got {type(data).__name__}")
    return data


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the class docstring's "Fields:" section (for --help)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    in_fields = False
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Fields:":
            in_fields = True
            continue
        if not in_fields or not stripped:
            continue
        head, sep, text = stripped.partition(": ")
        candidates = [n.strip() for n in head.split(",")]
        if sep and all(n.isidentifier() for n in candidates):
            names = candidates
            for name in names:
                docs[name] = text
        else:
            for name in names:
                docs[name] += " " + stripped
    return docs
