"""Typed configuration from YAML and dotted command-line overrides, for any dataclass.

A config is a tree of dataclasses (a run's is `runs/config.py: RunConfig`).
Plain data (parsed YAML, overrides) becomes that tree through `from_dict`,
which checks every key and every value's type against the annotations, so a
typo fails at once, naming the key and the closest valid one:

    unknown config key 'train.max_step'; did you mean 'train.max_steps'?

Numbers must be finite: `nan` or `inf` in a config is always a mistake, and
one that would otherwise surface steps later as a NaN loss (or be saved).
A section whose class has a `from_preset(name)` constructor (the model's)
may start from `preset: NAME` and override some fields.

Overrides use dotted keys, `train.lr=3e-4`; their values are parsed as YAML
scalars. `field_docs` reads each field's description from the class
docstring, so `--help` texts are the documentation.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from llmscratch.errors import LLMScratchError


def _suggest(key: str, valid: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotation `kind`; int is accepted where float is."""
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


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking every key and type (nested sections too)."""
    if not isinstance(data, dict):
        raise LLMScratchError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys to "
                              f"values, got {data!r}")
    if "preset" in data and hasattr(cls, "from_preset"):
        data = dict(data)
        base = dataclasses.asdict(cls.from_preset(str(data.pop("preset"))))
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
            kwargs[key] = from_dict(kind, {} if value is None else value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, kind, f"{prefix}{key}")
    return cls(**kwargs)


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
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise LLMScratchError(f"override {item!r}: the value is not valid YAML; quote a "
                                  "string, or give a number, true/false or a [list]") from None
        data.setdefault(parts[0], {})[parts[1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; every way it can be wrong is one line."""
    path = Path(path)
    if not path.is_file():
        raise LLMScratchError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise LLMScratchError(f"config file {path} is not UTF-8 text (bad byte at offset "
                              f"{err.start})") from None
    except OSError as err:
        raise LLMScratchError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise LLMScratchError(f"config file {path} is not valid YAML: {_yaml_problem(err)}"
                              ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LLMScratchError(f"config file {path} must hold a mapping of sections, "
                              f"got {type(data).__name__}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line message, as one line: the problem and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem}{where}"


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
