"""`python -m aot_ray.bench.plan`: `aot-ray plan` on a generated sweep of 10,000 trials, against its 1 s target.

Cold is the command as a user types it: a new Python process that imports aot-ray, loads and expands the sweep
and prints the plan (the tracking store does not exist, so nothing is read from MLflow; no data is prepared).
Warm is the same command's work in a process that has imported aot-ray and planned once: loading, expanding and
printing a sweep it has not seen (a new file each time). Each is the best of `--repeat` runs, and the line says
whether plan imported a statistics library (it must not: scipy alone takes most of a second).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGET_S = 1.0


def sweep(n_seeds: int = 50, name: str = "plan-bench") -> dict:
    """2 datasets x 5 models x 5 contexts x 2 learning rates x 2 directions x n_seeds (50: 10,000 trials)."""
    return {"name": name,
            "data": {"primes": {"kind": "primes", "digits": 3, "n_samples": 12000, "windows": "stream"},
                     "linear": {"kind": "linear", "bits": 12, "k": 3, "n_samples": 4000, "windows": "stream"}},
            "defaults": {"train": {"steps": 1000, "batch_size": 32}},
            "grid": {"dataset": ["primes", "linear"], "model": ["micro", "tiny", "mini", "gpt-5m", "gpt-14m"],
                     "context_length": [16, 32, 64, 128, 256], "seed": list(range(n_seeds)),
                     "optim.lr": [1e-3, 3e-4]}}


def cold(path: Path, tmp: Path) -> tuple[float, bool, int]:
    """(seconds, whether scipy was imported, trials planned) of `aot-ray plan` in a new process."""
    code = ("import sys, time; t = time.perf_counter(); from aot_ray.cli import main; "
            "import contextlib, io; out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): rc = main(sys.argv[1:])\n"
            "print(rc, time.perf_counter() - t, 'scipy' in sys.modules, sum(' pending' in l for l in out.getvalue().splitlines()))")
    start = time.perf_counter()
    got = subprocess.run([sys.executable, "-c", code, "plan", str(path), "--storage", str(tmp / "s"),
                          "--tracking-uri", f"sqlite:///{tmp}/none.db"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    rc, _, scipy, rows = got.stdout.split()
    assert rc == "0", got.stderr
    return wall, scipy == "True", int(rows)


def warm(tmp: Path, repeat: int) -> float:
    """Best seconds of plan on a new 10,000-trial file, in this process, after one plan to warm it."""
    from aot_ray.sweep import resolve
    from aot_ray.sweep.commands import plan_command

    best = float("inf")
    for i in range(repeat + 1):
        path = tmp / f"warm{i}.yaml"
        path.write_text(yaml.safe_dump(sweep(name=f"plan-bench-{i}")))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            plan_command(resolve(str(path), tracking_uri=f"sqlite:///{tmp}/none.db", storage=str(tmp / "s")))
        if i:  # the first warms the imports and caches
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m aot_ray.bench.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = tmp / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep()))
        runs = [cold(path, tmp) for _ in range(args.repeat)]
        wall = min(r[0] for r in runs)
        trials = runs[0][2]
        print(f"plan, {trials} trials, cold (a new process: import, load, expand, print): {wall:.2f} s, "
              f"target < {TARGET_S:.0f} s: {'met' if wall < TARGET_S else 'NOT met'} ({wall / TARGET_S:.2f} x target)"
              f"; statistics library imported: {'yes' if runs[0][1] else 'no'}")
        w = warm(tmp, args.repeat)
        print(f"plan, {trials} trials, warm (a new sweep in a process that planned once): {w:.2f} s, target < "
              f"{TARGET_S:.0f} s: {'met' if w < TARGET_S else 'NOT met'} ({w / TARGET_S:.2f} x target)")


if __name__ == "__main__":
    main()
