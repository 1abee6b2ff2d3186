"""The top level shows the layers, and the arrows point down: no module of aot_ray imports one of a layer above
its own, at the top of the file or inside a function (README's Layout names the layers), and no module imports
itself through a circle of other modules."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lowest first: pure helpers, the sweep spec, data, models with the memory model and the costs, the trainer, MLflow
# tracking, the sign test, the report, what drives Ray, the sweep driven end to end (plan, status, run), the
# cluster entries and the benchmarks, the command line over all of them
LAYER = {"errors": 0, "seeds": 0, "stats": 0, "precision": 0, "storage": 0, "publish": 0, "spec": 1, "data": 2,
         "models": 3, "gpu_memory": 3, "costs": 3, "train": 4, "tracking": 5, "signs": 6, "aggregate": 7,
         "execution": 8, "sweep": 9, "cluster": 10, "bench": 10, "cli": 11,
         "__init__": 0}


def top(mod: str) -> str:  # aot_ray.x.y -> x
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "aot_ray").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


def imports(mod: str, path: Path, module_level: bool = False) -> list[tuple[str, int]]:
    """(imported aot_ray module, line) of each import of `mod`: everywhere, or only those run when it is
    imported (`module_level`: not inside a function)."""
    known = modules()
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.ImportFrom)] if module_level else \
        [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    out = []
    for node in nodes:
        if node.level:
            base = pkg.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if not target.startswith("aot_ray"):
            continue
        for a in node.names:  # `from pkg import submodule` imports the submodule; `from pkg import name`, pkg
            sub = f"{target}.{a.name}"
            out.append((sub if sub in known else target, node.lineno))
    return out


def upward_imports() -> list[str]:
    bad = []
    for mod, p in modules().items():
        src = top(mod)
        for t, line in imports(mod, p):
            tt = top(t)
            if tt == src or tt not in LAYER or src not in LAYER:
                continue
            if LAYER[tt] > LAYER[src]:
                bad.append(f"{mod} (layer {LAYER[src]}) imports {t} (layer {LAYER[tt]}) line {line}")
    return sorted(bad)


def circles() -> list[list[str]]:
    """Every circle of module-level imports (a module that, through others, imports itself while it loads). A
    module's package is loaded before it, so an import of `aot_ray.x.y` counts as one of `aot_ray.x` too."""
    graph = {}
    for mod, p in modules().items():
        targets = set()
        for t, _ in imports(mod, p, module_level=True):
            parts = t.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        graph[mod] = {t for t in targets if t != mod and not mod.startswith(t + ".")}
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                found.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_no_module_imports_itself_through_a_circle():
    assert circles() == []


def test_the_circle_finder_finds_one(tmp_path, monkeypatch):
    # a circle written on purpose: a.py imports b, b imports a
    (tmp_path / "aot_ray" / "x").mkdir(parents=True)
    (tmp_path / "aot_ray" / "__init__.py").write_text("")
    (tmp_path / "aot_ray" / "x" / "__init__.py").write_text("")
    (tmp_path / "aot_ray" / "x" / "a.py").write_text("from .b import f\n")
    (tmp_path / "aot_ray" / "x" / "b.py").write_text("from .a import g\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert ["aot_ray.x.a", "aot_ray.x.b", "aot_ray.x.a"] in circles()


def test_every_top_level_module_and_package_has_a_layer():
    names = {p.stem for p in (ROOT / "aot_ray").glob("*.py")} | {p.parent.name for p in (ROOT / "aot_ray").glob("*/__init__.py")}
    assert names - set(LAYER) == set()
