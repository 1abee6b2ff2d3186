"""The top level shows the layers, and the arrows point down: no module of aot_ray imports one of a layer above
its own, at the top of the file or inside a function (README's Layout names the layers)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lowest first: pure helpers, the sweep spec, data, models with the memory model and the costs, the trainer, MLflow
# tracking, the sign test, the report, what drives Ray, the sweep driven end to end (plan, status, run), the entry
# points
LAYER = {"errors": 0, "seeds": 0, "stats": 0, "precision": 0, "storage": 0, "publish": 0, "spec": 1, "data": 2,
         "models": 3, "memory": 3, "costs": 3, "train": 4, "tracking": 5, "signs": 6, "aggregate": 7,
         "execution": 8, "sweep": 9, "cluster": 10, "cli": 10, "bench": 10,
         "__init__": 0}


def top(mod: str) -> str:  # aot_ray.x.y -> x
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports() -> list[str]:
    bad = []
    for p in (ROOT / "aot_ray").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        mod = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        pkg = mod if rel.name == "__init__" else mod.rsplit(".", 1)[0]
        src = top(mod)
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("aot_ray"):
                    continue
                targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
                for t in targets:
                    tt = top(t)
                    if tt == src or tt not in LAYER or src not in LAYER:
                        continue
                    if LAYER[tt] > LAYER[src]:
                        bad.append(f"{mod} (layer {LAYER[src]}) imports {t} (layer {LAYER[tt]}) line {node.lineno}")
    return sorted(bad)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_every_top_level_module_and_package_has_a_layer():
    names = {p.stem for p in (ROOT / "aot_ray").glob("*.py")} | {p.parent.name for p in (ROOT / "aot_ray").glob("*/__init__.py")}
    assert names - set(LAYER) == set()
