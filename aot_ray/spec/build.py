"""Typed construction of frozen dataclasses from parsed YAML, naming the YAML path of every bad value."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from ..errors import SpecError


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return str(value)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]
    return False, tp


def _expected(tp: Any) -> str:
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, got {describe(value)}")
    return value


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {describe(value)}")
    return value


def _float(value: Any, path: str) -> float:
    if isinstance(value, str):
        # PyYAML reads `1e-3` (no dot) as a string; accept it, as a researcher would expect
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number, got {describe(value)}")
    if not math.isfinite(value):
        raise SpecError(path, f"must be a finite number, got {value}")
    return float(value)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, got {describe(value)}")
    return value


_SCALARS = {bool: _bool, int: _int, float: _float, str: _str}


def coerce(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` (and convert YAML's string floats such as `1e-3`)."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise SpecError(path, "must not be null")
    tp = inner
    if optional and isinstance(value, bool) and dataclasses.is_dataclass(tp):
        return build(tp, {}, path) if value else None  # an optional section: `true` = its defaults, `false` = off
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):  # e.g. `int | "auto"`: the first member that takes the value
        members = typing.get_args(tp)
        for member in members:
            try:
                return coerce(member, value, path)
            except SpecError:
                continue
        raise SpecError(path, f"must be {' or '.join(_expected(m) for m in members)}, got {describe(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise SpecError(path, f"must be one of {', '.join(map(str, choices))}; got {describe(value)}")
        return value
    if tp in _SCALARS:
        return _SCALARS[tp](value, path)
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise SpecError(path, f"must be a mapping, got {describe(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SpecError(path, f"keys must be strings, got {describe(k)}")
            out[k] = coerce(item, v, join(path, k))
        return out
    if origin is tuple:
        (item, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise SpecError(path, f"must be a list, got {describe(value)}")
        return tuple(coerce(item, v, join(path, i)) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def check_limits(f: dataclasses.Field, value: Any, path: str) -> None:
    """Apply the `gt`/`ge`/`lt`/`le` limits declared in a field's metadata."""
    if value is None or not f.metadata or isinstance(value, (str, bool)):
        return
    is_int = isinstance(value, int)
    noun = "integer" if is_int else "number"
    gt, ge, lt, le = (f.metadata.get(k) for k in ("gt", "ge", "lt", "le"))
    if gt == 0 and value <= 0:
        raise SpecError(path, f"must be a positive {noun}, got {value}")
    if gt is not None and gt != 0 and value <= gt:
        raise SpecError(path, f"must be greater than {gt}, got {value}")
    if ge == 0 and value < 0:
        raise SpecError(path, f"must be a non-negative {noun}, got {value}")
    if ge is not None and ge != 0 and value < ge:
        raise SpecError(path, f"must be at least {ge}, got {value}")
    if lt is not None and value >= lt:
        raise SpecError(path, f"must be less than {lt}, got {value}")
    if le is not None and value > le:
        raise SpecError(path, f"must be at most {le}, got {value}")


def field_value(cls: type, name: str, value: Any, path: str) -> Any:
    """Coerce and limit-check one field of `cls` (used for grid override values too)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    hints = typing.get_type_hints(cls)
    out = coerce(hints[name], value, path)
    check_limits(f, out, path)
    return out


def kind_of(cls: type) -> str:
    return cls.__dataclass_fields__["kind"].default


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build(cls: type, raw: Any, path: str, skip: tuple[str, ...] = ()) -> Any:
    """Build `cls` from a mapping: unknown keys, missing required keys, wrong types and limits are errors."""
    if not isinstance(raw, dict):
        raise SpecError(path, f"must be a mapping, got {describe(raw)}")
    known = [n for n in field_names(cls) if n not in skip]
    for key in raw:
        if key not in known:
            raise SpecError(join(path, str(key)), f"unknown key (expected one of: {', '.join(known)})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name in raw:
            kwargs[f.name] = field_value(cls, f.name, raw[f.name], join(path, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(join(path, f.name), "is required")
    return cls(**kwargs)
