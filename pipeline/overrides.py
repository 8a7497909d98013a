"""Overrides onto frozen dataclasses, from YAML files or `--set`: types checked, unknown keys
rejected, each error naming the file (or "overrides:") and the key.

Example:
    >>> apply_overrides(FinetuneConfig(), {"epochs": 2}, "my.yaml:").epochs
    2
"""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from pathlib import Path

import yaml

from pipeline.errors import ConfigError

_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where: str):
    """Returns `value` checked against the annotation `tp`, or raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads 6e-3 as a string; users mean a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):  # converted here, once
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected one of {', '.join(m.value for m in tp)}, "
                              f"got {value!r}")
        # an unknown name stays a str for `config.validate`, whose message names the setting
        return tp(value) if value in {m.value for m in tp} else value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")


def apply_overrides(obj, overrides: dict, where: str):
    """Returns a copy of dataclass `obj` with `overrides` applied, recursing into sections."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {overrides!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in overrides.items():
        key_where = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"
        if key not in names:
            raise ConfigError(f"{key_where}: unknown key (known keys: {', '.join(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = apply_overrides(current, value, key_where)
        else:
            changes[key] = _coerce(value, hints[key], key_where)
    return dataclasses.replace(obj, **changes)


def read_yaml(path) -> dict:
    """Returns the mapping in a YAML file; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data
