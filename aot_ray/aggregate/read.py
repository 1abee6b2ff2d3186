"""Read layer of the report: MLflow runs of a sweep -> tidy trial records, with the per-window losses, the
validation curves and the per-position losses that the pure layer pairs. Nothing here computes a statistic."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..data.remote import cache_root
from ..models import arch_of
from ..storage import under
from ..tracking import AXES, DATA_VERSION, ERROR, STOP_AT, SweepRuns

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per downloaded file otherwise

STEP_FILE = re.compile(r"step-(\d+)\.json$")


def _number(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) else f


def record_of(run: Any) -> dict[str, Any]:
    """One tidy record from an MLflow run (no artifact reads)."""

    tags, metrics = run.data.tags, run.data.metrics
    axes = json.loads(tags[AXES]) if AXES in tags else {}  # absent on runs of older versions
    loss = metrics.get("final_val_loss", metrics.get("val_loss"))
    return {
        "trial_id": tags.get("trial_id"),
        "run_id": run.info.run_id,
        "status": run.info.status,
        "started_ms": run.info.start_time,
        "artifact_uri": run.info.artifact_uri,
        "data_version": tags.get(DATA_VERSION),  # the hash of the prepared data it read (None: older versions)
        **{k: tags.get(k) for k in ("pair_key", "cell_key", "direction", "dataset", "language", "model")},
        "arch": tags.get("arch") or arch_of(tags.get("model", "")),
        "windows": tags.get("windows", "stream"),  # line: one example per window (runs of older versions: stream)
        "context_length": int(tags.get("context_length", 0)),
        "seed": int(tags.get("seed", 0)),
        "axes": {k: _number(v) for k, v in axes.items()},
        "n_params": int(metrics["n_params"]) if "n_params" in metrics else None,
        "tokens": int(metrics["tokens"]) if "tokens" in metrics else None,
        "epochs": metrics.get("epochs"),  # the latest: how often the training split was seen
        "val_loss": loss if loss is None or math.isfinite(loss) else None,
        # the joint model's final loss in each direction (one model, evaluated forward and backward)
        "L_forward": metrics.get("final_val_loss_forward"),
        "L_backward": metrics.get("final_val_loss_backward"),
        "finished": run.info.status == "FINISHED",
        "error": next(iter((tags.get(ERROR) or "").strip().splitlines()[-1:]), None),  # its last line
        "steps": int(run.data.params["train.steps"]) if "train.steps" in run.data.params else None,
        "eval_every": int(run.data.params["train.eval_every"]) if "train.eval_every" in run.data.params else None,
        # set when the sweep stopped the pair once its sign was established: the report compares it at this step
        "stop_at": int(tags[STOP_AT]) if STOP_AT in tags else None,
        # what tells a live refresh that the run has a new evaluation, without reading its history
        "eval_step": int(metrics["eval_step"]) if "eval_step" in metrics else None,
        # both are logged at each evaluation: their latest values give the (constant) training tokens per step
        "tokens_per_step": (metrics["tokens"] / metrics["eval_step"]
                            if metrics.get("eval_step") and "tokens" in metrics else None),
        "signed": "aot_sign" in metrics,  # the sign test was logged on it before (by this or an earlier driver)
        # the step of the latest look logged on it: every look up to there is on the run (one batch per write)
        "signed_to": int(metrics["aot_sign_step"]) if "aot_sign_step" in metrics else None,
    }


class Reader:
    """Reads one sweep's runs. What a finished run holds never changes (a FINISHED run is never reopened), so its
    artifacts and curves are cached in memory for the life of the reader (a `--watch` loop keeps one) and on disk
    (`$AOT_RAY_CACHE/report/RUN_ID/`, by run id: a later report reads none of them again); those of running trials
    are read again each time. `prefetch` reads what the report needs on `threads` threads at once."""

    def __init__(self, uri: str, sweep: str, parent_run_id: str | None = None, threads: int = 8,
                 cache_dir: str | Path | None = None) -> None:

        self.uri, self.sweep = uri, sweep
        self.parent_run_id = parent_run_id  # None: the sweep's newest parent run
        self.runs = SweepRuns(uri, sweep, parent_run_id)  # the one handle on the sweep's runs
        self.client = self.runs.client
        self.threads = threads
        self._cache: dict[tuple[str, str], Any] = {}
        self._disk = Path(cache_dir) if cache_dir is not None else cache_root() / "report"
        self._tmp = tempfile.TemporaryDirectory(prefix="aot-report-")

    def records(self, include_running: bool = True, runs: list | None = None,
                include_failed: bool = False) -> list[dict[str, Any]]:
        """Newest run per trial id, of the reader's parent run (else the sweep's newest); of `runs` when given.
        FINISHED runs, RUNNING ones with `include_running`, FAILED ones with `include_failed`."""
        out: dict[str, dict[str, Any]] = {}
        if runs is None:
            runs = self.runs.trials()
        keep = {"FINISHED"} | ({"RUNNING"} if include_running else set()) | ({"FAILED"} if include_failed else set())
        for run in runs:  # newest first
            if run.info.status not in keep:
                continue
            rec = record_of(run)
            if rec["trial_id"] not in out:
                out[rec["trial_id"]] = rec
        return list(out.values())

    def prefetch(self, recs: list[dict[str, Any]]) -> None:
        """Read, on `threads` threads, what `build` reads of each finished run: the final per-window and
        per-position losses and the validation and token curves (cached)."""
        from concurrent.futures import ThreadPoolExecutor

        jobs: list[Any] = []
        for r in recs:
            if r["finished"]:  # what a running trial holds changes: read where it is used
                jobs += [lambda r=r: self.curve(r), lambda r=r: self.windows(r), lambda r=r: self.positions(r)]
                if r["direction"] == "forward" and r.get("tokens_per_step") is None:  # older runs: from the curve
                    jobs.append(lambda r=r: self.curve(r, "tokens"))
        with ThreadPoolExecutor(self.threads, thread_name_prefix="aot-report-read") as pool:
            for f in [pool.submit(j) for j in jobs]:
                f.exception()  # a failed read is read again (and reported) where it is used

    def _stable(self, run_id: str, name: str, fetch: Any) -> Any:
        """A finished run's `name`, from memory, else the disk cache, else `fetch()` (then kept in both)."""
        key = (run_id, name)
        if key in self._cache:
            return self._cache[key]
        path = Path(under(self._disk, run_id, what="run id")) / f"{name}.json"  # the id came from the store
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            value = fetch()
            if value is None:
                return None
            try:  # atomic: a reader killed mid-write leaves no partial file behind under the final name
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
                tmp.write_text(json.dumps(value))
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only or full cache only costs the next report its reads
        self._cache[key] = value
        return value

    def _download(self, rec: dict[str, Any], path: str) -> Any:
        """One artifact as JSON. With the run's artifact URI (from the search) it costs a listing and a download:
        by run id, MLflow would first read the run again to learn where its artifacts are."""
        from mlflow.artifacts import download_artifacts

        dst = tempfile.mkdtemp(dir=self._tmp.name)
        try:
            if rec.get("artifact_uri"):
                local = download_artifacts(artifact_uri=f"{rec['artifact_uri'].rstrip('/')}/{path}", dst_path=dst,
                                           tracking_uri=self.uri)
            else:
                local = self.client.download_artifacts(rec["run_id"], path, dst)
        except Exception:
            return None
        return json.loads(Path(local).read_text())

    def _json(self, rec: dict[str, Any], path: str, stable: bool) -> Any:
        if stable:
            return self._stable(rec["run_id"], path, lambda: self._download(rec, path))
        return self._download(rec, path)

    def windows(self, rec: dict[str, Any]) -> np.ndarray | None:
        """Final per-window validation losses of a finished trial."""
        if not rec["finished"]:
            return None
        d = self._json(rec, "eval/per_window.json", stable=True)
        return None if d is None else np.asarray(d["loss"], dtype=float)

    def directions(self, rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """The joint model's final per-window losses, forward and backward, on the same windows."""
        if not rec["finished"]:
            return None
        d = self._json(rec, "eval/per_window.json", stable=True)
        if d is None or "loss_forward" not in d:
            return None
        return np.asarray(d["loss_forward"], dtype=float), np.asarray(d["loss_backward"], dtype=float)

    def positions(self, rec: dict[str, Any]) -> np.ndarray | None:
        if not rec["finished"]:
            return None
        d = self._json(rec, "eval/per_position.json", stable=True)
        return None if d is None else np.asarray(d["loss"], dtype=float)

    def window_history(self, rec: dict[str, Any]) -> dict[int, np.ndarray]:
        """step -> per-window losses at every evaluation so far."""
        try:
            files = self.client.list_artifacts(rec["run_id"], "eval/windows")
        except Exception:
            return {}
        out = {}
        for f in files:
            m = STEP_FILE.search(f.path)
            if m:
                d = self._json(rec, f.path, stable=True)  # a written evaluation never changes
                if d is not None:
                    out[int(m.group(1))] = np.asarray(d["loss"], dtype=float)
        return out

    def curve(self, rec: dict[str, Any], metric: str = "val_loss") -> list[tuple[int, float]]:
        def fetch() -> list[list[float]]:
            return sorted([m.step, m.value] for m in self.client.get_metric_history(rec["run_id"], metric))

        points = self._stable(rec["run_id"], f"metrics/{metric}", fetch) if rec["finished"] else fetch()
        return [(int(st), float(v)) for st, v in points]

    def close(self) -> None:
        self._tmp.cleanup()

