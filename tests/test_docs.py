"""The docs site: the reference pages are generated from the schema and the parser (so they cannot drift), every
schema section is in them, README stays a front door, and `mkdocs build --strict` passes where MkDocs is installed
(CI installs it)."""

import dataclasses
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aot_ray.spec import schema

ROOT = Path(__file__).resolve().parent.parent


def _gen():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_schema_section_and_field_is_in_the_generated_reference():
    gen = _gen()
    text = gen.sweep_yaml_reference()
    covered = {cls for _, cls, _ in gen.SECTIONS}
    sections = {c for c in vars(schema).values() if dataclasses.is_dataclass(c) and isinstance(c, type)
                and c.__module__ == schema.__name__} - {schema.TrialSpec, schema.Defaults}
    assert sections <= covered, sections - covered  # a new section cannot be left out of the reference
    for cls in covered:
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, (cls.__name__, f.name)
    # the comment the code gives a field is its description
    assert "how windows are cut" in text and "| `position` | `Literal['learned', 'rope', 'none']` | `'learned'`" in text


def test_the_cli_reference_is_the_parsers_own_help():
    from aot_ray.cli import parsers

    text = _gen().cli_reference()
    _, commands = parsers()
    for name, p in commands.items():
        assert f"## `aot-ray {name}`" in text and p.format_help().strip() in text
    assert "--verbose" in text and "--quiet" in text


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 150
    text = "\n".join(lines[:30])
    assert "./scripts/setup.sh && .venv/bin/aot-ray run sweeps/quickstart.yaml" in text
    assert './scripts/setup.sh && .venv/bin/python -m pytest -q -m ""' in text


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="MkDocs is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "sweep-yaml" / "index.html").exists()
    assert "model.position" in (tmp_path / "site" / "reference" / "sweep-yaml" / "index.html").read_text()
