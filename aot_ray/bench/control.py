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
import yaml

from .. import signs
from ..aggregate.read import Reader
from ..aggregate.reporting import report
from ..signs import expected_pairs
from ..spec import expand, parse_sweep
from ..spec.expand import flatten
from ..sweep import ResolvedSweep
from ..sweep.status import status
from ..tracking import SweepRuns, TrialTracker
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
    env_before = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    root = Path(tempfile.mkdtemp(prefix="aot-bench-control-"))
    server = Server(root, backend=backend)
    try:
        b = _Bench(server, root, n, changed, say)
        # the trackers (in trial processes on a real sweep) fail fast on each request; the driver, status and
        # report keep MLflow's own retries and timeout, as they do in their own processes
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            if env_before.get(k) is None:
                os.environ.pop(k, None)
        return b.refreshes() + b.callback() + b.mostly_finished() + b.status_and_report()
    finally:
        server.stop()


class _Bench:
    """One size of the control-plane benchmark: N trial runs on a real server, half evaluated."""

    def __init__(self, server: Any, root: Path, n: int, changed: float, say: Any) -> None:
        raw = sweep_raw(n)
        self.spec = parse_sweep(raw)
        self.trials = expand(self.spec)
        self.server, self.root, self.n, self.changed, self.say = server, root, len(self.trials), changed, say
        # one process stands in for N trial processes here: their system-metrics threads (one get_run every
        # interval each) are not the control plane under test
        self.ctx = replace(SweepRuns(server.uri, self.spec.name).start(yaml.safe_dump(raw)), system_metrics_s=0)
        self.trackers: dict[str, Any] = {}
        self.evals: dict[str, int] = {}  # trial_id -> evaluations logged
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(self._open_run, self.trials))
        say(f"N={self.n}: {self.n} RUNNING trial runs with {EVALS // 2} evaluations each set up in "
            f"{time.perf_counter() - t0:.0f} s")
        self.watcher: Any = None

    def _reader(self) -> Reader:
        return Reader(self.server.uri, self.spec.name, self.ctx.parent_run_id, cache_dir=self.root / "cache")

    def _open_run(self, t: Any) -> None:
        rng = np.random.default_rng(abs(hash(t.trial_id)) % 2**32)
        tr = TrialTracker(self.ctx, t)
        tr.begin(None)
        tr.log_params(flatten(t))
        for k in range(1, EVALS // 2 + 1):
            evaluate(tr, t, k * STEPS // EVALS, rng)
        self.trackers[t.trial_id] = (tr, t, rng)
        self.evals[t.trial_id] = EVALS // 2

    def _refresh_after(self, moved: list) -> float:
        """Seconds of the refresh that follows a new evaluation of each of `moved`."""
        for t in moved:
            tr, _, rng = self.trackers[t.trial_id]
            self.evals[t.trial_id] += 1
            evaluate(tr, t, self.evals[t.trial_id] * STEPS // EVALS, rng)
        t0 = time.perf_counter()
        self.watcher.refresh()
        return time.perf_counter() - t0

    def _moved(self) -> int:
        return max(1, round(self.changed * self.n))

    def refreshes(self) -> list[tuple[str, float, float]]:
        self.watcher = signs.Watcher(self._reader(), expected=expected_pairs(self.trials))
        t0 = time.perf_counter()
        self.watcher.refresh()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.watcher.refresh()  # the steady state: the next refresh's searches reach back past this one's start only
        self.say(f"N={self.n}: a refresh with nothing new {time.perf_counter() - t0:.2f} s")
        again = self._refresh_after(self.trials[: self._moved()])
        w = self.watcher.last
        self.say(f"N={self.n}: sign refresh, first {first:.2f} s; after {self._moved()} runs ({self.changed:.0%}) "
                 f"got an evaluation {again:.2f} s ({w['read']} histories read, {w['looks']} looks logged, "
                 f"{w['failed']} failed reads)")
        self.again = again
        return [("sign refresh, all running, 5% new", again, 2.0)]

    def callback(self) -> list[tuple[str, float, float]]:
        """The sweep's callback as Tune's loop calls it: results every 10 ms while refreshes run on their thread."""
        from ..execution.sign_callback import SignCallback  # Ray's Tune: imported for this part only

        cb = SignCallback(functools.partial(Reader, self.server.uri, self.spec.name, self.ctx.parent_run_id),
                          every_s=0.0, expected=expected_pairs(self.trials))
        t_end = time.monotonic() + max(3.0, 2 * self.again + 1)
        while time.monotonic() < t_end:
            cb.on_trial_result(0, [], None, {})
            time.sleep(0.01)
        cb.on_experiment_end([])
        self.say(f"N={self.n}: longest on_trial_result while refreshes ran {cb.longest_s * 1000:.1f} ms")
        return [("longest on_trial_result", cb.longest_s, 0.05)]

    def mostly_finished(self) -> list[tuple[str, float, float]]:
        """The usual shape of a large sweep: most runs finished, as many running as the cluster has GPUs (10%)."""
        running = self.trials[: max(2, self.n // 10)]
        quiet(lambda t: finish(*self.trackers[t.trial_id], self.evals[t.trial_id]), self.trials[len(running):])
        time.sleep(self.watcher.margin_s)  # a sweep's refreshes are run.sign_interval_s (30 s) apart: more than that
        self.watcher.refresh()  # reads the runs that finished
        mixed = self._refresh_after(running[: self._moved()])
        w = self.watcher.last
        self.say(f"N={self.n}: sign refresh with {self.n - len(running)} runs finished and {len(running)} running, "
                 f"{self._moved()} of them with a new evaluation: {mixed:.2f} s ({w['runs']} runs, {w['read']} "
                 f"histories read, {w['looks']} looks logged)")
        t0 = time.perf_counter()
        quiet(lambda t: finish(*self.trackers[t.trial_id], self.evals[t.trial_id]), running)
        self.say(f"N={self.n}: runs finished in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        self.watcher.refresh(full=True)  # what the sweep's callback does once Tune ends: the last looks
        self.say(f"N={self.n}: the sweep's last sign refresh {time.perf_counter() - t0:.1f} s "
                 f"({self.watcher.last['looks']} looks logged)")
        return [(f"sign refresh, {len(running)} running, 5% new", mixed, 2.0)]

    def status_and_report(self) -> list[tuple[str, float, float]]:
        t0 = time.perf_counter()
        rows = status(ResolvedSweep.of(self.spec, uri=self.server.uri, storage=self.root / "storage"))
        st = time.perf_counter() - t0
        assert sum(r["state"] == "TERMINATED" for r in rows) == self.n and all(r["step"] == STEPS for r in rows)
        out = [("status", st, 5.0)]
        for label in ("report (cold cache)", "report (next)"):
            t0 = time.perf_counter()
            rep = report(self.server.uri, self.spec.name, self.root / "report", with_plots=False,
                         reader=self._reader())
            took = time.perf_counter() - t0
            assert len(rep["pairs"]) == self.n // 2
            out.append((label, took, 60.0 if "cold" in label else 20.0))
        self.say(f"N={self.n}: status {st:.2f} s; report cold {out[-2][1]:.1f} s, next {out[-1][1]:.1f} s")
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
