"""The reference pages, generated at every `mkdocs build` (an MkDocs hook: `hooks:` in mkdocs.yml), so that they
cannot drift from the code: the sweep YAML's fields from the schema's frozen dataclasses (`aot_ray.spec.schema`:
each field's type, default, limits, and the comment the code gives it), and the command line from the parser
itself (`aot-ray <command> --help`)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path

from aot_ray.spec import schema

HERE = Path(__file__).resolve().parent
LIMITS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}

# (YAML path, the dataclass it holds, what it is), in the order a sweep file reads
SECTIONS = [
    ("(top level)", schema.SweepSpec, "A sweep file."),
    ("data.NAME (kind: primes)", schema.PrimesData, ""),
    ("data.NAME (kind: linear)", schema.LinearData, ""),
    ("data.NAME (kind: text)", schema.TextData, ""),
    ("data.NAME (kind: hf)", schema.HFData, ""),
    ("data.NAME.tokenizer", schema.TokenizerSpec, ""),
    ("defaults.model", schema.ModelSpec, ""),
    ("defaults.optim", schema.OptimSpec, ""),
    ("defaults.train", schema.TrainSpec, ""),
    ("defaults.resources", schema.ResourcesSpec, ""),
    ("grid", schema.Grid, ""),
    ("orders", schema.OrdersSpec, ""),
    ("run", schema.RunSpec, ""),
    ("run.stop_on_sign", schema.SignStopSpec, ""),
    ("lr_search", schema.LrSearchSpec, ""),
]


def _type(t: typing.Any) -> str:
    text = t.__name__ if isinstance(t, type) else str(t)
    text = re.sub(r"typing\.|aot_ray\.spec\.schema\.", "", text)
    return re.sub(r"Optional\[(.*)\]$", r"\1 | None", text).replace("NoneType", "None")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`" if f.default is not None else "`null`"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "`{}`" if value == {} else "`[]`" if value in ((), []) else "(its section's defaults)"
    return "**required**"


def comments(cls: type) -> dict[str, str]:
    """field -> the comment the source gives it: at the end of its line, else the comment lines just above."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = re.match(r"\s+(\w+): [^=]+?(?:= .*?)?(?:\s+#\s*(.*))?$", line)
        if m and not stripped.startswith(("def ", "@", '"""')):
            out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        above = []
    return out


def fields_table(cls: type) -> str:
    notes = comments(cls)
    rows = ["| field | type | default | limits | what it is |", "|---|---|---|---|---|"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        limits = " ".join(f"{LIMITS[k]} {v}" for k, v in f.metadata.items() if k in LIMITS)
        note = notes.get(f.name, "").replace("|", "\\|")
        kind = _type(hints.get(f.name, f.type)).replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{kind}` | {_default(f)} | {limits} | {note} |")
    return "\n".join(rows)


def sweep_yaml_reference() -> str:
    parts = ["# Sweep YAML reference", "",
             "Generated from `aot_ray/spec/schema.py` at every docs build: each section is one frozen dataclass, "
             "checked field by field when a sweep loads (a bad value is one line naming its path). Sections under "
             "`defaults` are also set per model preset under `per_model.PRESET`, and any of their fields is a grid "
             "axis as `section.field` (`optim.lr: [1e-3, 3e-4]`). Two grid axes have short names: `order` is "
             "`direction`, `position` is `model.position`.", ""]
    for path, cls, what in SECTIONS:
        doc = inspect.cleandoc(cls.__doc__ or "") if cls.__doc__ and not cls.__doc__.startswith(cls.__name__) \
            else ""
        parts += [f"## `{path}`", "", what or doc, "", fields_table(cls), ""]
    return "\n".join(parts)


def cli_reference() -> str:
    from aot_ray.cli import parsers

    parser, commands = parsers()
    parts = ["# Command line reference", "", "Generated from `aot-ray`'s own parser at every docs build.", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    for name, p in commands.items():
        parts += [f"## `aot-ray {name}`", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def write(folder: Path = HERE / "reference") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in (("sweep-yaml.md", sweep_yaml_reference()), ("cli.md", cli_reference())):
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        out.append(path)
    return out


def on_pre_build(config: typing.Any, **kwargs: typing.Any) -> None:  # the MkDocs hook
    write()
