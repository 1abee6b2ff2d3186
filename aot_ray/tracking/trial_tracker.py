"""The trial tracker: one trial's MLflow run, as the trainer sees it (`train.tracker.Tracker`). It finds the
trial's run again by its tags (a retried trial logs into its existing run, and never reopens a FINISHED one),
buffers metrics and writes them in batches (a failed write keeps them for the next flush instead of dropping
them), carries MLflow's system metrics, and reads the driver's stop request."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import warnings
from typing import Any

from ..errors import RunGone, TrackingError
from ..spec.presets import arch_of
from .runs import (ATTEMPT, AXES, DATA_VERSION, ERROR, HOST, INTERRUPTED, PID, ROLE, STOP_AT, TRIAL_TAGS,
                   SweepContext, find_trial_run)
from .store import client, retry


def run_holds(c: Any, run_id: str | None, step: int) -> bool:
    """Whether a trial run holds every point its trainer logged up to `step`: its latest `eval_step` (one per
    evaluation, flushed with every point before it) is at or past it, so a checkpoint at `step` may be resumed
    from without a gap in the curve. A run that cannot be read (`TrialTracker.begin` decides) or of a version
    before eval_step is taken as it is; one that holds nothing does not."""
    if not run_id:
        return True
    try:
        metrics = retry(lambda: c.get_run(run_id)).data.metrics
    except Exception:
        return True
    if "eval_step" not in metrics:
        return "train_loss" in metrics and "train_step" not in metrics
    return metrics["eval_step"] >= step


class TrialTracker:
    """The trainer's `Tracker` on an MLflow child run of the sweep's parent run: one run per trial.

    A resumed trial continues its run (found by the checkpoint's run id, else by its `trial_id` tag) and drops
    metric points at steps the run already has, so a curve has no duplicate step and, because training is
    deterministic, no gap. A trial that starts from scratch while a stale unfinished run exists soft-deletes
    that run (restorable in MLflow) and opens a new one. Writes are buffered; a failed write keeps the buffer.
    """

    def __init__(self, ctx: SweepContext, trial: Any, flush_every: int = 500, role: str = "trial",
                 flush_s: float = 30.0) -> None:
        from mlflow.entities import Metric, Param

        self._Metric, self._Param = Metric, Param
        self.ctx = ctx
        self.trial = trial
        self.client = client(ctx.uri)
        self.flush_every = flush_every
        # and at least this often (seconds): the driver's stall watch and the UI see train_step move between
        # evaluations; a failed flush is tried again only after as long, so an outage does not slow the loop
        self.flush_s = flush_s
        self._flushed_at = time.monotonic()
        self._failing = False  # the last flush failed
        self._buffer: list = []
        # every point logged since the last evaluation the store confirmed (its eval_step written): a checkpoint
        # carries these (`carry`), so that one written while the store is down resumes without a gap (`replay`)
        self._journal: list = []
        self._confirmed = -1  # that evaluation's step
        self._pending_artifacts: list[tuple[Any, str]] = []
        self._last_step: dict[str, int] = {}
        self.run_id: str | None = None
        self.extra_tags: dict[str, str] = {}  # per attempt, e.g. the Ray node the trial runs on
        self.role = role  # "trial", or "lr-search" for the learning-rate phase (never paired by the report)
        self.gpu_tflops = ctx.gpu_tflops
        self._system: Any = None  # MLflow's SystemMetricsMonitor on this run

    def _create_run(self) -> str:
        trial = self.trial
        tags = {ROLE: self.role, "mlflow.parentRunId": self.ctx.parent_run_id}
        tags.update({k: str(getattr(trial, k) if k != "model" else trial.model.preset)
                     for k in TRIAL_TAGS if k != "sweep"})
        tags["sweep"] = self.ctx.sweep
        if trial.language is not None:
            tags["language"] = trial.language
        tags["arch"] = arch_of(trial.model.preset)
        tags["windows"] = trial.windows  # line (one example per window) or stream: the report names the design
        if tags["arch"] == "gpt2":
            tags["position"] = trial.model.position  # learned, rope or none: a column of the runs table
        # the grid axes of this trial (dotted overrides such as data.k included): what the report trends over
        tags[AXES] = json.dumps(dict(trial.axes), sort_keys=True, default=str)
        if trial.trial_id in self.ctx.data_versions:
            tags[DATA_VERSION] = self.ctx.data_versions[trial.trial_id]
        return retry(lambda: self.client.create_run(self.ctx.experiment_id, run_name=trial.trial_id, tags=tags)).info.run_id

    def begin(self, resumed_from: int | None, run_id: str | None = None) -> None:
        existing = None
        if run_id:
            try:
                existing = retry(lambda: self.client.get_run(run_id))
                if existing.info.lifecycle_stage != "active":
                    existing = None
            except Exception:
                existing = None
        if existing is None:
            existing = retry(lambda: find_trial_run(self.ctx.uri, self.ctx.experiment_id, self.trial.trial_id,
                                                    self.ctx.parent_run_id, self.role))
        if existing is not None and existing.info.status == "FINISHED":
            # a finished run is final: a second attempt must not reopen it (the driver skips such trials)
            raise RuntimeError(f"trial {self.trial.trial_id} already has a FINISHED run {existing.info.run_id}; "
                               f"it is not reopened")
        if existing is not None and resumed_from is None and existing.data.metrics:
            retry(lambda: self.client.delete_run(existing.info.run_id))  # a stale attempt's curve; restorable
            existing = None
        if existing is None:
            self.run_id = self._create_run()
        else:
            self.run_id = existing.info.run_id
            for key in existing.data.metrics:
                history = retry(lambda: self.client.get_metric_history(self.run_id, key))
                self._last_step[key] = max((m.step for m in history), default=-1)
            retry(lambda: self.client.update_run(self.run_id, status="RUNNING"))
        self._start_system_metrics(resumed=existing is not None)
        attempt = int(existing.data.tags.get(ATTEMPT, "0")) + 1 if existing is not None else 1
        retry(lambda: self.client.log_batch(self.run_id, tags=[
            self._tag(PID, str(os.getpid())), self._tag(HOST, socket.gethostname()),
            self._tag(ATTEMPT, str(attempt)), *(self._tag(k, v) for k, v in self.extra_tags.items())]))

    def _start_system_metrics(self, resumed: bool) -> None:
        """MLflow's own system metrics on the run (system/cpu_utilization_percentage, system memory, and on a GPU
        node with nvidia-ml-py, the aot-ray[gpu] extra, GPU utilisation, memory and power), on its thread. A
        resumed run continues their steps. Off for the lr search's short runs and with system_metrics_s 0."""
        if self.role != "trial" or not self.ctx.system_metrics_s:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per trial

            # one sample per interval: the monitor also asks the server for the run's status at every sample, and
            # hundreds of trials at once must not load the tracking server more than their own metrics do
            self._system = SystemMetricsMonitor(self.run_id, sampling_interval=self.ctx.system_metrics_s,
                                                samples_before_logging=1, resume_logging=resumed,
                                                tracking_uri=self.ctx.uri)
            self._system.start()
        except Exception as e:  # psutil missing, an odd platform: training goes on without them
            warnings.warn(f"MLflow system metrics are off for run {self.run_id}: {e}")
            self._system = None

    def _stop_system_metrics(self) -> None:
        if self._system is not None:
            with contextlib.suppress(Exception):
                self._system.finish()
            self._system = None

    def holds(self, run_id: str | None, step: int) -> bool:
        return run_holds(self.client, run_id, step)

    def _tag(self, key: str, value: str):
        from mlflow.entities import RunTag

        return RunTag(key, value)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [self._Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            chunk = items[i : i + 100]
            retry(lambda: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if step <= self._last_step.get(k, -1):
                continue  # already in the run from an earlier attempt
            self._buffer.append(self._Metric(k, float(v), ts, int(step)))
            self._journal.append(self._buffer[-1])
        waited = time.monotonic() - self._flushed_at
        if waited >= self.flush_s or (len(self._buffer) >= self.flush_every and not self._failing):
            self.flush()

    def flush(self, attempts: int = 2) -> bool:
        """Write what is buffered; on failure keep it for the next flush. True when nothing is left."""
        self._flushed_at = time.monotonic()
        try:
            while self._buffer:
                chunk = self._buffer[:1000]
                retry(lambda: self.client.log_batch(self.run_id, metrics=chunk), attempts=attempts)
                del self._buffer[: len(chunk)]
                evals = [int(m.value) for m in chunk if m.key == "eval_step"]
                if evals and max(evals) > self._confirmed:
                    self._confirmed = max(evals)
                    self._journal = [m for m in self._journal if m.step > self._confirmed]
            while self._pending_artifacts:
                obj, name = self._pending_artifacts[0]
                retry(lambda: self.client.log_dict(self.run_id, obj, name), attempts=attempts)
                self._pending_artifacts.pop(0)
        except Exception as e:
            self._check_run(e)
            warnings.warn(f"MLflow write failed ({str(e).splitlines()[0]}); {len(self._buffer)} metrics and "
                          f"{len(self._pending_artifacts)} artifacts kept for the next flush")
            self._failing = True
            return False
        self._failing = False
        return True

    def carry(self) -> dict[str, Any]:
        """What a checkpoint written now must carry for its run to hold every point up to its step once resumed:
        the last evaluation the store confirmed, the points logged since, the artifacts not yet written."""
        return {"confirmed": self._confirmed,
                "metrics": [(m.key, m.value, m.timestamp, m.step) for m in self._journal],
                "artifacts": list(self._pending_artifacts)}

    def replay(self, carried: dict[str, Any] | None) -> None:
        """After `begin` on a resume: log what the checkpoint carried (points the run already has are dropped,
        as for any point), then try to write it."""
        if not carried:
            return
        for key, value, ts, step in carried.get("metrics", []):
            if step > self._last_step.get(key, -1):
                self._buffer.append(self._Metric(key, float(value), int(ts), int(step)))
                self._journal.append(self._buffer[-1])
        self._pending_artifacts.extend(tuple(a) for a in carried.get("artifacts", []))
        self.flush()

    def _check_run(self, error: Exception) -> None:
        """Raise RunGone when `error` says the run can take no write any more: deleted (by a second driver of the
        sweep, or by hand) or unknown to the store. Such a write is never retried; an outage is."""
        code = getattr(error, "error_code", "")
        if code not in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return
        try:
            stage = self.client.get_run(self.run_id).info.lifecycle_stage
        except Exception as e:
            if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                return  # cannot tell (an outage): kept for the next flush
            stage = "missing"
        if stage != "active":
            what = "was deleted" if stage == "deleted" else "does not exist"
            raise RunGone(f"trial {self.trial.trial_id}: its MLflow run {self.run_id} {what} in {self.ctx.uri} (by "
                          f"another driver of this sweep, or by hand); {len(self._buffer)} metrics cannot be "
                          f"written, so this attempt ends here (its checkpoints are kept)") from None

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self._pending_artifacts.append((obj, artifact_file))

    def stop_requested(self) -> int | None:
        """The step at which the sweep's sequential sign test settled this trial's pair (tag STOP_AT, set by the
        driver), or None; only asked for when the sweep stops on sign. A failed read is a None: keep training."""
        if not self.ctx.stop_on_sign or self.run_id is None:
            return None
        try:
            value = self.client.get_run(self.run_id).data.tags.get(STOP_AT)
            return int(value) if value is not None else None
        except Exception:
            return None

    def finish(self, status: str = "FINISHED", error: str | None = None, patience_s: float = 600.0) -> None:
        """Flush everything (waiting out an outage for up to `patience_s`), then close the run."""
        self._stop_system_metrics()
        deadline = time.monotonic() + patience_s
        delay = 1.0
        while not self.flush():
            if time.monotonic() > deadline:
                raise TrackingError(f"{len(self._buffer)} metrics of run {self.run_id} could not be written to "
                                    f"{self.ctx.uri} within {patience_s:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        if error:
            retry(lambda: self.client.set_tag(self.run_id, ERROR, error[:5000]))
        elif status == "FINISHED":  # an earlier attempt's error or interruption does not describe a finished run
            for tag in (ERROR, INTERRUPTED):
                with contextlib.suppress(Exception):
                    self.client.delete_tag(self.run_id, tag)
        if status == "KILLED":
            retry(lambda: self.client.set_tag(self.run_id, INTERRUPTED, "1"))
        retry(lambda: self.client.set_terminated(self.run_id, status=status))
