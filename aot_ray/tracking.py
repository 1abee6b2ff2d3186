"""MLflow tracking: one experiment per sweep, a parent run for the sweep, one child run per trial.

Runs are found again by tags (`aot.role`, `sweep`, `trial_id`), so a retried trial logs into its existing run
and `plan`/`run` can tell which trials are finished. Metrics are buffered and written in batches; a failed
write keeps them in the buffer for the next flush instead of dropping them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import TrackingError
from .store import client, retry, sqlite_path
from .spec.presets import arch_of

ROLE = "aot.role"
INTERRUPTED = "aot.interrupted"  # on runs ended by Ctrl-C / SIGTERM: status KILLED, resumable
STOP_AT = "aot.stop_at"  # on both runs of a pair: the evaluation step at which its sign was established
ERROR = "aot.error"  # on a failed run: the error's text
AXES = "aot.axes"  # on a trial run: its grid axes (JSON)
NODE = "aot.node"  # on a trial run: the Ray node it ran on
WORKERS = "aot.workers"  # on a data-parallel trial run: its worker count
LR_SEARCH = "aot.lr_search"  # on a learning-rate search run: the preset searched
PID, HOST, ATTEMPT = "aot.pid", "aot.host", "aot.attempt"  # on a trial run: who runs it, which attempt
DATA_VERSION = "aot.data_version"  # on a trial run: the content hash of the prepared data it read
SUPERSEDED, SUPERSEDED_BY = "superseded", "aot.superseded_by"  # role (and the new data version) of a finished
# run whose data changed after it ran: out of the sweep's trials, kept for its history
TRIAL_TAGS = ("sweep", "trial_id", "pair_key", "cell_key", "direction", "dataset", "model", "context_length", "seed")


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def artifact_root(uri: str) -> str | None:
    """For a local SQLite store, keep artifacts beside the database (the server decides for http stores)."""
    db = sqlite_path(uri)
    if db is not None:
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


@dataclass(frozen=True)
class SweepContext:
    """What a trial needs to find its place in MLflow (small and picklable: it travels to Ray workers)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    stop_on_sign: bool = False  # trials look for the driver's stop request (tag STOP_AT) at each evaluation
    system_metrics_s: float = 30.0  # MLflow's system metrics (CPU, memory, GPU) every this many seconds; 0: off
    gpu_tflops: float | None = None  # the peak for mfu on a GPU whose name is not in train.mfu's table
    # trial id -> the content hash of the prepared data it reads (tag DATA_VERSION on its run): a finished run
    # counts as done only while its data is the data of now
    data_versions: Mapping[str, str] = field(default_factory=dict)


def experiment_id(uri: str, sweep: str, create: bool) -> str | None:
    c = client(uri)
    exp = c.get_experiment_by_name(sweep)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    return c.create_experiment(sweep, artifact_location=artifact_root(uri))


def find_parent(uri: str, exp_id: str, sweep: str):
    runs = client(uri).search_runs(
        [exp_id], filter_string=f"tags.`{ROLE}` = 'sweep' and tags.sweep = '{_quote(sweep)}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


def parents(uri: str, exp_id: str, sweep: str) -> list:
    """Every parent run of the sweep (one per `--fresh` start), newest first."""
    return client(uri).search_runs(
        [exp_id], filter_string=f"tags.`{ROLE}` = 'sweep' and tags.sweep = '{_quote(sweep)}'",
        order_by=["attributes.start_time DESC"], max_results=1000)


def chosen_parent(uri: str, sweep: str, run_id: str | None = None) -> tuple[Any, list]:
    """(the parent run a report reads, the sweep's other parent runs newest first): `run_id` when given (it must be
    a parent run of this sweep), else the newest. (None, []) when the sweep has no run yet."""
    exp_id = experiment_id(uri, sweep, create=False)
    every = parents(uri, exp_id, sweep) if exp_id is not None else []
    if run_id is None:
        return (every[0], every[1:]) if every else (None, [])
    match = [r for r in every if r.info.run_id == run_id or r.info.run_id.startswith(run_id)]
    if len(match) != 1:
        known = ", ".join(r.info.run_id for r in every) or "none"
        raise TrackingError(f"--parent {run_id}: {'no' if not match else 'more than one'} parent run of sweep "
                            f"{sweep!r} matches (its parent runs: {known})")
    return match[0], [r for r in every if r.info.run_id != match[0].info.run_id]


def start_sweep(uri: str, sweep: str, spec_text: str, fresh: bool = False) -> SweepContext:
    """Get or create the sweep's experiment and parent run (a new one with `fresh`); record the sweep YAML."""
    exp_id = experiment_id(uri, sweep, create=True)
    c = client(uri)
    parent = None if fresh else find_parent(uri, exp_id, sweep)
    if parent is None:
        run = c.create_run(exp_id, run_name=sweep, tags={ROLE: "sweep", "sweep": sweep})
        run_id = run.info.run_id
    else:
        run_id = parent.info.run_id
        c.update_run(run_id, status="RUNNING")
    c.log_text(run_id, spec_text, "sweep.yaml")
    return SweepContext(uri=uri, experiment_id=exp_id, parent_run_id=run_id, sweep=sweep)


LR_TAG = "aot.lr."  # + model preset: the learning rate the sweep's search chose, on the parent run


def searched_lrs(uri: str, sweep: str, parent_run_id: str | None = None) -> dict[str, float]:
    """preset -> learning rate chosen by the sweep's lr search (empty without a parent run or a search)."""
    exp_id = experiment_id(uri, sweep, create=False)
    if exp_id is None:
        return {}
    parent = client(uri).get_run(parent_run_id) if parent_run_id else find_parent(uri, exp_id, sweep)
    if parent is None:
        return {}
    return {k[len(LR_TAG):]: float(v) for k, v in parent.data.tags.items() if k.startswith(LR_TAG)}


def record_lr(ctx: SweepContext, preset: str, lr: float, loss: float, trials: int) -> None:
    """Keep a search's result on the parent run, so a resumed sweep reuses it (and its trial ids)."""
    from mlflow.entities import Metric, RunTag

    c = client(ctx.uri)
    retry(lambda: c.log_batch(ctx.parent_run_id, tags=[RunTag(LR_TAG + preset, repr(lr))], metrics=[
        Metric(f"lr_search.{preset}.best_val_loss", loss, int(time.time() * 1000), trials)]))


SIGN_ALPHA, SIGN_AFTER = "aot.sign_alpha", "aot.sign_after"  # the sweep's sequential sign test, on the parent run


def record_sign_rule(ctx: SweepContext, alpha: float, after: float) -> None:
    """Keep the sign test's settings on the parent run, so a later `report` repeats the test the run made."""
    c = client(ctx.uri)
    retry(lambda: (c.set_tag(ctx.parent_run_id, SIGN_ALPHA, repr(alpha)),
                   c.set_tag(ctx.parent_run_id, SIGN_AFTER, repr(after))))


def sign_rule(parent: Any) -> tuple[float, float] | None:
    """(alpha, after) recorded on a parent run, or None."""
    tags = parent.data.tags
    if SIGN_ALPHA in tags and SIGN_AFTER in tags:
        return float(tags[SIGN_ALPHA]), float(tags[SIGN_AFTER])
    return None


def end_sweep(ctx: SweepContext, status: str = "FINISHED") -> None:
    c = client(ctx.uri)
    if status == "KILLED":  # interrupted: the parent and every trial run left open are marked so, not failed
        c.set_tag(ctx.parent_run_id, INTERRUPTED, "1")
        for run in trial_runs(ctx.uri, ctx.sweep, "RUNNING", ctx.parent_run_id):
            with contextlib.suppress(Exception):
                c.set_tag(run.info.run_id, INTERRUPTED, "1")
                c.set_terminated(run.info.run_id, status="KILLED")
    elif status == "FINISHED":
        with contextlib.suppress(Exception):
            c.delete_tag(ctx.parent_run_id, INTERRUPTED)
    c.set_terminated(ctx.parent_run_id, status=status)


def trial_runs(uri: str, sweep: str, status: str | None = None, parent_run_id: str | None = None,
               ended_after_ms: int | None = None, evaluated_after_s: float | None = None) -> list:
    """Child runs of the sweep's current parent run (or of `parent_run_id`), optionally by status, by an end
    after `ended_after_ms` (epoch ms) and by an evaluation after `evaluated_after_s` (epoch s: the trainer's
    `eval_time`), newest first."""
    exp_id = experiment_id(uri, sweep, create=False)
    if exp_id is None:
        return []
    if parent_run_id is None:
        parent = find_parent(uri, exp_id, sweep)
        if parent is None:
            return []
        parent_run_id = parent.info.run_id
    filt = (f"tags.`{ROLE}` = 'trial' and tags.sweep = '{_quote(sweep)}' "
            f"and tags.`mlflow.parentRunId` = '{parent_run_id}'")
    if status:
        filt += f" and attributes.status = '{status}'"
    if ended_after_ms is not None:
        filt += f" and attributes.end_time > {int(ended_after_ms)}"
    if evaluated_after_s is not None:
        filt += f" and metrics.eval_time > {float(evaluated_after_s):.3f}"
    c = client(uri)
    out, token = [], None
    while True:
        page = c.search_runs([exp_id], filter_string=filt, order_by=["attributes.start_time DESC"],
                             max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def finished_trial_ids(uri: str, sweep: str, parent_run_id: str | None = None,
                       versions: Mapping[str, str] | None = None) -> set[str]:
    """Trial ids with a FINISHED run; with `versions` (trial id -> the hash of its prepared data now) only those
    whose run read that data (runs of versions before DATA_VERSION count as current)."""
    return {r.data.tags.get("trial_id") for r in trial_runs(uri, sweep, "FINISHED", parent_run_id)
            if versions is None or not _stale(r, versions)}


def _stale(run: Any, versions: Mapping[str, str]) -> bool:
    had, now = run.data.tags.get(DATA_VERSION), versions.get(run.data.tags.get("trial_id"))
    return had is not None and now is not None and had != now


def stale_trial_runs(uri: str, sweep: str, versions: Mapping[str, str], parent_run_id: str | None = None) -> list:
    """FINISHED trial runs whose prepared data has changed since they ran (a corpus edited, say)."""
    return [r for r in trial_runs(uri, sweep, "FINISHED", parent_run_id) if _stale(r, versions)]


def supersede(uri: str, runs: list, versions: Mapping[str, str]) -> None:
    """Take finished runs of changed data out of the sweep's trials (role SUPERSEDED, and the version that
    replaced theirs): kept in MLflow for their history, no longer done, paired or reported."""
    c = client(uri)
    for r in runs:
        new = versions.get(r.data.tags.get("trial_id"), "")
        retry(lambda: c.set_tag(r.info.run_id, SUPERSEDED_BY, new))
        retry(lambda: c.set_tag(r.info.run_id, ROLE, SUPERSEDED))


def find_trial_run(uri: str, exp_id: str, trial_id: str, parent_run_id: str, role: str = "trial"):
    runs = client(uri).search_runs(
        [exp_id], filter_string=f"tags.`{ROLE}` = '{role}' and tags.trial_id = '{_quote(trial_id)}' "
                                f"and tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


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

    def __init__(self, ctx: SweepContext, trial: Any, flush_every: int = 500, role: str = "trial") -> None:
        from mlflow.entities import Metric, Param

        # fail fast on each HTTP call and let the buffer carry metrics over an outage, instead of MLflow's
        # default minutes of retries blocking the training loop
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._Metric, self._Param = Metric, Param
        self.ctx = ctx
        self.trial = trial
        self.client = client(ctx.uri)
        self.flush_every = flush_every
        self._buffer: list = []
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
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self, attempts: int = 2) -> bool:
        """Write what is buffered; on failure keep it for the next flush. True when nothing is left."""
        try:
            while self._buffer:
                chunk = self._buffer[:1000]
                retry(lambda: self.client.log_batch(self.run_id, metrics=chunk), attempts=attempts)
                del self._buffer[: len(chunk)]
            while self._pending_artifacts:
                obj, name = self._pending_artifacts[0]
                retry(lambda: self.client.log_dict(self.run_id, obj, name), attempts=attempts)
                self._pending_artifacts.pop(0)
        except Exception as e:
            warnings.warn(f"MLflow write failed ({str(e).splitlines()[0]}); {len(self._buffer)} metrics and "
                          f"{len(self._pending_artifacts)} artifacts kept for the next flush")
            return False
        return True

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
