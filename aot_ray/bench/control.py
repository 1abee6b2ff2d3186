"""The driver's control plane at cluster scale, against a real `mlflow server` this benchmark starts (SQLite,
4 workers, on 127.0.0.1): N trial runs in pairs and cells of 3 seeds, written through the real `TrialTracker`.

    python -m aot_ray.bench.control [--sizes 100,1000] [--changed 0.05] [--backend-store-uri postgresql://...]

For each N it prints, against its target:
- the live sign refresh (`signs.Watcher`, as the sweep's Tune callback runs it) with every run RUNNING and 5
  evaluations in: the first refresh (reads everything), one with nothing new, then one after `--changed` of the
  runs got a new evaluation (target <= 2 s at 1000 runs); the same once 90% of the runs have finished;
- the longest `on_trial_result` of the sweep's sign callback while refreshes run (Tune's event loop must never
  wait on them; target <= 0.05 s);
- `status` and `report` once every run has FINISHED (status <= 5 s, report <= 60 s with a cold cache, <= 20 s
  for the next report).
The targets are a user's patience at 1000 runs; smaller N must meet them too.
Setting the runs up takes minutes at N = 1000 (it is not timed).
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..tracking.store import wait_for_server

EVALS = 10  # evaluations per run; 5 are in when the refresh is timed
STEPS = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, workers: int = 4, backend: str | None = None) -> None:
        port = _free_port()
        self.uri = f"http://127.0.0.1:{port}"
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
             "--backend-store-uri", backend or f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "art")],
            stdout=(root / "server.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        why = wait_for_server(self.uri, 120, self.proc)
        if why is not None:
            self.stop()
            raise RuntimeError(f"mlflow server {why} (log: {root / 'server.log'})")

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def sweep_raw(n: int) -> dict[str, Any]:
    cells = max(1, round(n / 6))  # 3 seeds x 2 directions per cell
    return {"name": "bench-control",
            "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256}},
            "defaults": {"train": {"steps": STEPS, "eval_every": STEPS // EVALS}},
            "grid": {"dataset": ["lin"], "model": ["micro"], "context_length": list(range(16, 16 + cells)),
                     "seed": [0, 1, 2]}}


def loss(t: Any, step: int, rng: np.random.Generator) -> float:
    gap = 0.02 * ((t.context_length % 3) - 1) if t.direction == "backward" else 0.0  # cells of every sign
    return float(2.0 - step / (2 * STEPS) + gap + 0.01 * rng.standard_normal())


def evaluate(tr: Any, t: Any, step: int, rng: np.random.Generator) -> None:
    v = loss(t, step, rng)
    for s in range(step - STEPS // EVALS + 50, step + 1, 50):
        tr.log_metrics({"train_loss": v + 0.05, "lr": 1e-3, "train_step": s}, step=s)
    tr.log_metrics({"val_loss": v, "eval_step": step, "eval_time": time.time(), "tokens": step * 512}, step=step)
    tr.flush()


def finish(tr: Any, t: Any, rng: np.random.Generator, done: int) -> None:
    """The evaluations after the `done` first, the final artifacts, the run FINISHED (MLflow's "View run" line,
    which its client writes to stdout at each run's end, goes with the trial process's output on a sweep; the
    benchmark drops it with `quiet`)."""
    for k in range(done + 1, EVALS + 1):
        evaluate(tr, t, k * STEPS // EVALS, rng)
    final = loss(t, STEPS, rng)
    tr.log_metrics({"final_val_loss": final}, step=STEPS)
    tr.log_dict({"loss": (final + 0.1 * rng.standard_normal(256)).tolist()}, "eval/per_window.json")
    tr.log_dict({"loss": (final + 0.01 * rng.standard_normal(64)).tolist()}, "eval/per_position.json")
    tr.finish("FINISHED")


def quiet(fn: Any, items: list) -> None:
    """fn over items on 16 threads, with stdout dropped meanwhile."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), ThreadPoolExecutor(16) as pool:
        list(pool.map(fn, items))


def bench(n: int, changed: float, say: Any = print, backend: str | None = None) -> list[tuple[str, float, float]]:
    """(name, seconds, target) for N runs."""
    import yaml

    from .. import signs
    from ..aggregate.read import Reader
    from ..aggregate.write import report
    from ..sweep.status import status
    from ..spec import expand, parse_sweep
    from ..spec.expand import flatten
    from ..tracking import TrialTracker, start_sweep
    from ..signs import expected_pairs, sign_callback

    env_before = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    root = Path(tempfile.mkdtemp(prefix="aot-bench-control-"))
    server = Server(root, backend=backend)
    out = []
    try:
        raw = sweep_raw(n)
        spec = parse_sweep(raw)
        trials = expand(spec)
        n = len(trials)
        # one process stands in for N trial processes here: their system-metrics threads (one get_run every
        # interval each) are not the control plane under test
        ctx = replace(start_sweep(server.uri, spec.name, yaml.safe_dump(raw)), system_metrics_s=0)
        trackers: dict[str, Any] = {}
        evals: dict[str, int] = {}  # trial_id -> evaluations logged

        def open_run(t: Any) -> None:
            rng = np.random.default_rng(abs(hash(t.trial_id)) % 2**32)
            tr = TrialTracker(ctx, t)
            tr.begin(None)
            tr.log_params(flatten(t))
            for k in range(1, EVALS // 2 + 1):
                evaluate(tr, t, k * STEPS // EVALS, rng)
            trackers[t.trial_id] = (tr, t, rng)
            evals[t.trial_id] = EVALS // 2

        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(open_run, trials))
        say(f"N={n}: {n} RUNNING trial runs with {EVALS // 2} evaluations each set up in "
            f"{time.perf_counter() - t0:.0f} s")

        # the trackers (in trial processes on a real sweep) fail fast on each request; the driver, status and
        # report keep MLflow's own retries and timeout, as they do in their own processes
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            if env_before.get(k) is None:
                os.environ.pop(k, None)
        reader = Reader(server.uri, spec.name, ctx.parent_run_id, cache_dir=root / "cache")
        watcher = signs.Watcher(reader, expected=expected_pairs(trials))
        t0 = time.perf_counter()
        watcher.refresh()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        watcher.refresh()  # the steady state: the next refresh's searches reach back past this one's start only
        idle = time.perf_counter() - t0
        say(f"N={n}: a refresh with nothing new {idle:.2f} s")

        def new_evaluation(t: Any) -> None:
            tr, _, rng = trackers[t.trial_id]
            evals[t.trial_id] += 1
            evaluate(tr, t, evals[t.trial_id] * STEPS // EVALS, rng)

        def refresh_after(moved: list) -> float:
            """Seconds of the refresh that follows a new evaluation of each of `moved`."""
            for t in moved:
                new_evaluation(t)
            t0 = time.perf_counter()
            watcher.refresh()
            return time.perf_counter() - t0

        moved = trials[: max(1, round(changed * n))]
        again = refresh_after(moved)
        say(f"N={n}: sign refresh, first {first:.2f} s ({watcher.last['runs']} runs read); after "
            f"{len(moved)} runs ({changed:.0%}) got an evaluation {again:.2f} s ({watcher.last['read']} histories "
            f"read, {watcher.last['looks']} looks logged, {watcher.last['failed']} failed reads)")
        out.append(("sign refresh, all running, 5% new", again, 2.0))

        # the sweep's callback as Tune's loop calls it: results every 10 ms while refreshes run on their thread
        cb = sign_callback(functools.partial(Reader, server.uri, spec.name, ctx.parent_run_id), every_s=0.0,
                           expected=expected_pairs(trials))
        t_end = time.monotonic() + max(3.0, 2 * again + 1)
        while time.monotonic() < t_end:
            cb.on_trial_result(0, [], None, {})
            time.sleep(0.01)
        cb.on_experiment_end([])
        out.append(("longest on_trial_result", cb.longest_s, 0.05))
        say(f"N={n}: longest on_trial_result while refreshes ran {cb.longest_s * 1000:.1f} ms")

        # the usual shape of a large sweep: most runs finished, as many running as the cluster has GPUs (10%)
        running = trials[: max(2, n // 10)]
        quiet(lambda t: finish(*trackers[t.trial_id], evals[t.trial_id]), trials[len(running):])
        time.sleep(watcher.margin_s)  # a sweep's refreshes are run.sign_interval_s (30 s) apart: more than that
        watcher.refresh()  # reads the runs that finished
        mixed = refresh_after(running[: max(1, round(changed * n))])
        say(f"N={n}: sign refresh with {n - len(running)} runs finished and {len(running)} running, "
            f"{max(1, round(changed * n))} of them with a new evaluation: {mixed:.2f} s ({watcher.last['runs']} runs, "
            f"{watcher.last['read']} histories read, {watcher.last['looks']} looks logged)")
        out.append((f"sign refresh, {len(running)} running, 5% new", mixed, 2.0))
        t0 = time.perf_counter()
        quiet(lambda t: finish(*trackers[t.trial_id], evals[t.trial_id]), running)
        say(f"N={n}: runs finished in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        watcher.refresh(full=True)  # what the sweep's callback does once Tune ends: the last looks are on the runs
        say(f"N={n}: the sweep's last sign refresh {time.perf_counter() - t0:.1f} s ({watcher.last['looks']} looks "
            f"logged)")

        t0 = time.perf_counter()
        rows = status(spec, server.uri)
        st = time.perf_counter() - t0
        assert sum(r["state"] == "TERMINATED" for r in rows) == n and all(r["step"] == STEPS for r in rows)
        out.append(("status", st, 5.0))
        for label in ("report (cold cache)", "report (next)"):
            t0 = time.perf_counter()
            rep = report(server.uri, spec.name, root / "report", with_plots=False,
                         reader=Reader(server.uri, spec.name, ctx.parent_run_id, cache_dir=root / "cache"))
            took = time.perf_counter() - t0
            assert len(rep["pairs"]) == n // 2
            out.append((label, took, 60.0 if "cold" in label else 20.0))
        say(f"N={n}: status {st:.2f} s; report cold {out[-2][1]:.1f} s, next {out[-1][1]:.1f} s")
    finally:
        server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aot_ray.bench.control", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000", help="trial-run counts, comma-separated")
    ap.add_argument("--changed", type=float, default=0.05, help="fraction of runs with a new evaluation")
    ap.add_argument("--backend-store-uri", default=None,
                    help="the server's store (default: a new SQLite file); an empty database per size")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "View run ..." line per run closed
    ok = True
    lines = []
    for n in (int(x) for x in args.sizes.split(",")):
        for name, took, target in bench(n, args.changed, backend=args.backend_store_uri):
            good = took <= target
            ok &= good
            lines.append(f"N={n:<5} {name:<32} {took:8.2f} s   target <= {target:.2f} s   "
                         f"{'ok' if good else 'MISSED'}")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
