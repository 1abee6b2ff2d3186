"""Sweep YAML -> validated `SweepSpec`. Every rejection names the YAML path of the bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from .build import build, describe, field_names, field_value, join, kind_of
from .checks import check_dataset, check_languages, check_lr_search, check_model, check_trials
from .presets import PRESETS
from .orders import KNOWN as KNOWN_ORDERS
from .schema import (
    LrSearchSpec,
    DATASET_KINDS,
    Defaults,
    Grid,
    ModelSpec,
    OptimSpec,
    OrdersSpec,
    ResourcesSpec,
    RunSpec,
    SweepSpec,
    TrainSpec,
)

TOP_KEYS = ("name", "description", "data", "defaults", "per_model", "grid", "run", "lr_search", "orders",
            "null_controls")
SECTIONS: dict[str, type] = {"model": ModelSpec, "optim": OptimSpec, "train": TrainSpec, "resources": ResourcesSpec}
# fields that have a named axis of their own, or that identify a dataset's type
RESERVED = {"model.preset": "use the `model` axis", "data.kind": "a dataset's kind cannot vary"}
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# a sweep's name becomes folder names (`<name>-<parent>-<hash>`, `<name>-<parent>-lr-<preset>` under storage and
# under Ray's session folder) and its MLflow experiment: a file name may have at most 255 bytes, and Ray nests the
# experiment folder in deep paths of its own
MAX_NAME = 100
# checked before parsing: a real sweep is a few KB (the largest shipped one is under 5 KB), and PyYAML takes
# seconds and hundreds of MB per few MB of keys
MAX_SWEEP_BYTES = 1 << 20
# a window of one token has no order: its forward and backward models would be the same model
MIN_CONTEXT = 2


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def load_sweep(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read and validate a sweep YAML; errors carry the file name."""
    return load_sweep_text(path, sets)[0]


def apply_sets(raw: Any, sets: list[str] | tuple[str, ...]) -> Any:
    """Apply `--set dotted.key=yaml_value` overrides to the parsed YAML before validation.

    A key is split at dots, except where a mapping already has a key with dots in it (a longer existing key wins)
    and under `grid`, whose axis names are dotted fields themselves: `grid.optim.lr=[1e-3,2e-3]` sets the axis
    `optim.lr`, `grid.seed=[0,1]` the axis `seed`."""
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SpecError(f"--set {item}", "expected KEY=VALUE, e.g. --set defaults.train.steps=100")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SpecError(f"--set {key}", f"value is not valid YAML: {value}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"--set {key}", "the sweep is not a mapping")
        node, path, rest = raw, [], key.split(".")
        while True:
            if not rest or not all(rest):
                raise SpecError(f"--set {key}", "empty field name (two dots, or a dot at an end)")
            if path == ["grid"]:
                part = ".".join(rest)  # the rest is one axis name, dotted or not
            else:
                # the longest run of parts that names an existing key (dataset names may hold dots)
                part = next((".".join(rest[:n]) for n in range(len(rest), 1, -1) if ".".join(rest[:n]) in node),
                            rest[0])
            rest = rest[len(part.split(".")):]
            path.append(part)
            if not rest:
                node[part] = parsed
                break
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {key}", f"{'.'.join(path)} is not a mapping")
    return raw


def load_sweep_text(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> tuple[SweepSpec, str]:
    """(spec, the YAML text that produced it: the file, or the file with `--set` overrides applied)."""
    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise SpecError("", "no such sweep file (give the path of a YAML file, e.g. sweeps/quickstart.yaml)", source)
    size = p.stat().st_size
    if size > MAX_SWEEP_BYTES:
        raise SpecError("", f"is {size / 2**20:.1f} MiB; a sweep file may have at most {MAX_SWEEP_BYTES // 2**20} MiB "
                            f"(a sweep's grid multiplies a few axes; it does not list its trials)", source)
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise SpecError("", "is not a text file (a sweep is YAML, e.g. sweeps/quickstart.yaml)", source) from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError("", f"{where}invalid YAML: {problem}", source) from None
    try:
        if sets:
            raw = apply_sets(raw, sets)
            text = yaml.safe_dump(raw, sort_keys=False)
        return parse_sweep(raw), text
    except SpecError as e:
        raise e.with_source(source) from None


def parse_sweep(raw: Any) -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError("", f"a sweep must be a mapping with keys {', '.join(TOP_KEYS)}; got {describe(raw)}")
    for key in raw:
        if key not in TOP_KEYS:
            raise SpecError(str(key), f"unknown key (expected one of: {', '.join(TOP_KEYS)})")
    for key in ("name", "data", "grid"):
        if key not in raw:
            raise SpecError(key, "is required")
    name = raw["name"]
    if not isinstance(name, str) or not name or not set(name) <= NAME_CHARS or not name[0].isalnum():
        raise SpecError("name", f"must be letters, digits, '-', '_', '.', starting with a letter or digit (it names "
                                f"folders and the MLflow experiment); got {describe(name)}")
    if len(name) > MAX_NAME:
        raise SpecError("name", f"is {len(name)} characters long; at most {MAX_NAME} (it names storage folders, whose "
                                f"names the file system limits)")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise SpecError("description", f"must be a string, got {describe(description)}")
    data = _parse_data(raw["data"])
    defaults = build(Defaults, raw.get("defaults") or {}, "defaults")
    check_model(defaults.model, "defaults.model")
    orders = _parse_orders(raw.get("orders") or {})
    grid = _parse_grid(raw["grid"], data, orders)
    run = build(RunSpec, raw.get("run") or {}, "run")
    per_model = _parse_per_model(raw.get("per_model") or {})
    lr_search = None if raw.get("lr_search") is None else build(LrSearchSpec, raw["lr_search"], "lr_search")
    null_controls = raw.get("null_controls", False)
    if not isinstance(null_controls, bool):
        raise SpecError("null_controls", f"must be true or false, got {describe(null_controls)}")
    spec = SweepSpec(name=name, description=description, data=data, defaults=defaults, grid=grid, run=run,
                     per_model=per_model, lr_search=lr_search, orders=orders, null_controls=null_controls)
    check_trials(spec)
    if lr_search is not None:
        check_lr_search(spec)
    return spec


def _parse_data(raw: Any) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise SpecError("data", "must be a non-empty mapping of dataset name -> dataset settings")
    out = {}
    for name, body in raw.items():
        path = join("data", str(name))
        if not isinstance(name, str) or not set(name) <= NAME_CHARS:
            raise SpecError(path, "dataset names use letters, digits, '-', '_', '.'")
        if not isinstance(body, dict):
            raise SpecError(path, f"must be a mapping, got {describe(body)}")
        kind = body.get("kind")
        if kind not in DATASET_KINDS:
            raise SpecError(join(path, "kind"), f"must be one of {', '.join(DATASET_KINDS)}; got {describe(kind)}")
        out[name] = build(DATASET_KINDS[kind], body, path)
        check_dataset(out[name], path)
    return out


def _axis_values(raw: Any, path: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise SpecError(path, f"must be a non-empty list of values, got {describe(raw) if raw != [] else 'an empty list'}")
    seen = []
    for i, v in enumerate(raw):
        if v in seen:
            raise SpecError(join(path, i), f"duplicate value {describe(v)}")
        seen.append(v)
    return raw


def _parse_orders(raw: Any) -> OrdersSpec:
    """`orders:` with each custom order read (a list, or a file of whitespace-separated positions)."""
    if not isinstance(raw, dict):
        raise SpecError("orders", f"must be a mapping (chunk, custom), got {describe(raw)}")
    custom = raw.get("custom") or {}
    if not isinstance(custom, dict):
        raise SpecError("orders.custom", f"must be a mapping of name -> permutation, got {describe(custom)}")
    read = {}
    for name, value in custom.items():
        path = join("orders.custom", str(name))
        if not isinstance(name, str) or not name or not set(name) <= NAME_CHARS or name in KNOWN_ORDERS:
            raise SpecError(path, "a custom order's name uses letters, digits, '-', '_', '.' and is not a named "
                                  "order's")
        read[name] = _positions(value, path)
    return build(OrdersSpec, {**raw, "custom": read}, "orders")


def _positions(value: Any, path: str) -> list:
    if isinstance(value, str):  # a file of positions
        try:
            words = Path(value).expanduser().read_text().split()
        except OSError as e:
            raise SpecError(path, f"cannot read {value}: {e.strerror or e}") from None
        try:
            return [int(w) for w in words]
        except ValueError:
            raise SpecError(path, f"{value} must hold whitespace-separated integers (positions 0..T-1)") from None
    if not isinstance(value, list) or not value:
        raise SpecError(path, f"must be a list of positions 0..T-1, or a file of them; got {describe(value)}")
    return value


AXIS_ALIASES = {"order": "direction", "position": "model.position"}


def _parse_grid(raw: Any, data: dict, orders: OrdersSpec) -> Grid:
    if not isinstance(raw, dict):
        raise SpecError("grid", f"must be a mapping of axis -> list of values, got {describe(raw)}")
    spoken: dict[str, str] = {}  # axis -> the name the YAML gave it, for messages
    for alias, axis in AXIS_ALIASES.items():  # `order` is the direction axis, `position` is model.position
        if alias in raw:
            if axis in raw:
                raise SpecError(join("grid", alias), f"is the {axis} axis by another name: give one of them")
            raw = {(axis if k == alias else k): v for k, v in raw.items()}
            spoken[axis] = alias
    for key in ("dataset", "model"):  # context_length: a synthetic set windowed by line has its own
        if key not in raw:
            raise SpecError(join("grid", key), "is required")
    named: dict[str, tuple] = {}
    overrides = []
    # named axes first: dotted `data.*` axes are checked against the datasets the grid uses
    ordered = sorted(raw.items(), key=lambda kv: isinstance(kv[0], str) and "." in kv[0])
    for key, values in ordered:
        path = join("grid", spoken.get(key, str(key)))
        values = _axis_values(values, path)
        if key == "dataset":
            for i, v in enumerate(values):
                if v not in data:
                    raise SpecError(join(path, i), f"unknown dataset {describe(v)} (defined under data: {', '.join(data)})")
        elif key == "model":
            for i, v in enumerate(values):
                if not isinstance(v, str):
                    raise SpecError(join(path, i), f"must be a preset name, got {describe(v)}")
                check_model(ModelSpec(preset=v), join(path, i))
        elif key == "context_length":
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise SpecError(join(path, i), f"must be a positive integer, got {describe(v)}")
                if v < MIN_CONTEXT:
                    raise SpecError(join(path, i), f"must be at least {MIN_CONTEXT}, got {v}: a window of one token "
                                                   f"has no order, so its forward and backward models are the same")
        elif key in ("seed", "order_seed"):
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise SpecError(join(path, i), f"must be a non-negative integer, got {describe(v)}")
        elif key == "language":
            for i, v in enumerate(values):
                if not isinstance(v, str) or not v or not set(v) <= NAME_CHARS:
                    raise SpecError(join(path, i), f"must be a language code such as 'en', got {describe(v)}")
        elif key == "direction":
            for i, v in enumerate(values):
                if v not in KNOWN_ORDERS and v not in orders.custom:
                    raise SpecError(join(path, i), f"unknown order {describe(v)} (named: {', '.join(KNOWN_ORDERS)}; "
                                                   f"or a custom one of orders.custom)")
        elif isinstance(key, str) and "." in key:
            overrides.append((key, tuple(_override_values(key, values, path, [data[d] for d in named["dataset"]]))))
            continue
        else:
            raise SpecError(path, "unknown axis (expected dataset, model, context_length, direction (or order), "
                                  "seed, order_seed, language, position, or a dotted field such as optim.lr, "
                                  "train.steps, data.k)")
        named[key] = tuple(values)
    check_languages(named.get("language", ()), named["dataset"], data)
    return Grid(**named, overrides=tuple(overrides))


def _parse_per_model(raw: Any) -> dict:
    if not isinstance(raw, dict):
        raise SpecError("per_model", f"must be a mapping of preset -> settings, got {describe(raw)}")
    out: dict = {}
    for preset, sections in raw.items():
        path = join("per_model", str(preset))
        if preset not in PRESETS:
            raise SpecError(path, f"unknown model preset {describe(preset)} (known: {', '.join(PRESETS)})")
        if not isinstance(sections, dict):
            raise SpecError(path, f"must be a mapping of section -> fields, got {describe(sections)}")
        out[preset] = {}
        for section, fields in sections.items():
            spath = join(path, str(section))
            if section not in SECTIONS:
                raise SpecError(spath, f"unknown section (expected one of: {', '.join(SECTIONS)})")
            if not isinstance(fields, dict):
                raise SpecError(spath, f"must be a mapping of field -> value, got {describe(fields)}")
            cls = SECTIONS[section]
            for name, value in fields.items():
                if name not in field_names(cls) or f"{section}.{name}" in RESERVED:
                    raise SpecError(join(spath, str(name)), f"{section} has no settable field {name!r}")
                out[preset].setdefault(section, {})[name] = field_value(cls, name, value, join(spath, str(name)))
    return out


def _override_values(key: str, values: list, path: str, datasets: list) -> list:
    section, _, name = key.partition(".")
    if key in RESERVED:
        raise SpecError(path, f"cannot be a grid axis: {RESERVED[key]}")
    if section == "data":
        out = list(values)
        for cls in {type(d): None for d in datasets}:  # every dataset kind on the grid must accept the field
            if name not in field_names(cls):
                raise SpecError(path, f"datasets of kind {kind_of(cls)!r} have no field {name!r}")
            out = [field_value(cls, name, v, join(path, i)) for i, v in enumerate(values)]
        return out
    if section not in SECTIONS:
        raise SpecError(path, f"unknown section {section!r} (expected one of: data, {', '.join(SECTIONS)})")
    cls = SECTIONS[section]
    if name not in field_names(cls):
        raise SpecError(path, f"{section} has no field {name!r} (expected one of: {', '.join(field_names(cls))})")
    return [field_value(cls, name, v, join(path, i)) for i, v in enumerate(values)]
