"""Read layer of the report: MLflow runs of a sweep -> tidy trial records, with the per-window losses, the
validation curves and the per-position losses that the pure layer pairs. Nothing here computes a statistic."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..tracking import AXES, STOP_AT, client, trial_runs

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
    from ..models import arch_of

    tags, metrics = run.data.tags, run.data.metrics
    axes = json.loads(tags[AXES]) if AXES in tags else {}  # absent on runs of older versions
    loss = metrics.get("final_val_loss", metrics.get("val_loss"))
    return {
        "trial_id": tags.get("trial_id"),
        "run_id": run.info.run_id,
        "status": run.info.status,
        **{k: tags.get(k) for k in ("pair_key", "cell_key", "direction", "dataset", "language", "model")},
        "arch": tags.get("arch") or arch_of(tags.get("model", "")),
        "context_length": int(tags.get("context_length", 0)),
        "seed": int(tags.get("seed", 0)),
        "axes": {k: _number(v) for k, v in axes.items()},
        "n_params": int(metrics["n_params"]) if "n_params" in metrics else None,
        "tokens": int(metrics["tokens"]) if "tokens" in metrics else None,
        "epochs": metrics.get("epochs"),  # the latest: how often the training split was seen
        "val_loss": loss if loss is None or math.isfinite(loss) else None,
        "finished": run.info.status == "FINISHED",
        "steps": int(run.data.params["train.steps"]) if "train.steps" in run.data.params else None,
        "eval_every": int(run.data.params["train.eval_every"]) if "train.eval_every" in run.data.params else None,
        # set when the sweep stopped the pair once its sign was established: the report compares it at this step
        "stop_at": int(tags[STOP_AT]) if STOP_AT in tags else None,
    }


class Reader:
    """Reads one sweep's runs; artifact downloads of finished runs are cached for the life of the reader (a
    `--watch` loop keeps one), those of running trials are read again each time."""

    def __init__(self, uri: str, sweep: str, parent_run_id: str | None = None) -> None:
        self.uri, self.sweep = uri, sweep
        self.parent_run_id = parent_run_id  # None: the sweep's newest parent run
        self.client = client(uri)
        self._cache: dict[tuple[str, str], Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="aot-report-")

    def records(self, include_running: bool = True) -> list[dict[str, Any]]:
        """Newest run per trial id, of the reader's parent run (else the sweep's newest)."""
        out: dict[str, dict[str, Any]] = {}
        for run in trial_runs(self.uri, self.sweep, parent_run_id=self.parent_run_id):  # newest first
            if run.info.status != "FINISHED" and not (include_running and run.info.status == "RUNNING"):
                continue
            rec = record_of(run)
            if rec["trial_id"] not in out:
                out[rec["trial_id"]] = rec
        return list(out.values())

    def _json(self, run_id: str, path: str, stable: bool) -> Any:
        key = (run_id, path)
        if stable and key in self._cache:
            return self._cache[key]
        try:
            local = self.client.download_artifacts(run_id, path, self._tmp.name)
        except Exception:
            return None
        value = json.loads(Path(local).read_text())
        if stable:
            self._cache[key] = value
        return value

    def windows(self, rec: dict[str, Any]) -> np.ndarray | None:
        """Final per-window validation losses of a finished trial."""
        if not rec["finished"]:
            return None
        d = self._json(rec["run_id"], "eval/per_window.json", stable=True)
        return None if d is None else np.asarray(d["loss"], dtype=float)

    def positions(self, rec: dict[str, Any]) -> np.ndarray | None:
        if not rec["finished"]:
            return None
        d = self._json(rec["run_id"], "eval/per_position.json", stable=True)
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
                d = self._json(rec["run_id"], f.path, stable=True)  # a written evaluation never changes
                if d is not None:
                    out[int(m.group(1))] = np.asarray(d["loss"], dtype=float)
        return out

    def curve(self, rec: dict[str, Any], metric: str = "val_loss") -> list[tuple[int, float]]:
        history = self.client.get_metric_history(rec["run_id"], metric)
        return sorted((m.step, m.value) for m in history)

    def close(self) -> None:
        self._tmp.cleanup()

