"""A sweep's runs in MLflow: one experiment per sweep, a parent run per start of it, one child run per trial;
every tag name; the searches that find them again by those tags (`aot.role`, `sweep`, `trial_id`), so that
`plan`, `run`, `status` and the report tell which trials are finished; the sweep's own records (its learning
rates, its sign rule, its data versions)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import TrackingError
from .store import client, retry, sqlite_path

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
LR_TAG = "aot.lr."  # + model preset: the learning rate the sweep's search chose, on the parent run
NOTE = "mlflow.note.content"  # a run's description in the MLflow UI: on the parent run, the report's headline
# MLflow 3's UI opens an experiment without this tag in its GenAI layout (traces, judges, prompts); a sweep's
# experiment is training runs
EXPERIMENT_KIND, TRAINING_RUNS = "mlflow.experimentKind", "custom_model_development"
# the one map from a run's MLflow status to a trial's state (Tune's words): `status` shows it, the progress line
# counts by it; KILLED is a run ended by a signal or a lost store, resumed by the next `run`
TRIAL_STATE = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "KILLED": "INTERRUPTED", "RUNNING": "RUNNING",
               "SCHEDULED": "PENDING"}
TRIAL_TAGS = ("sweep", "trial_id", "pair_key", "cell_key", "direction", "dataset", "model", "context_length", "seed")


RUN_ID_LENGTH = 32  # MLflow's run ids: 32 hex digits


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


class SweepRuns:
    """One handle on a sweep's runs: the client, the sweep's experiment, its parent run (the one given, else the
    newest), and the searches of its trial runs. Built once where a sweep's runs are read or written."""

    def __init__(self, uri: str, sweep: str, parent_run_id: str | None = None) -> None:
        self.uri, self.sweep = uri, sweep
        self.given_parent = parent_run_id  # the parent run asked for (`--parent`: an id or a prefix), None: the newest
        # a whole run id is used as it is (a trainer's own lookups cost no query); a prefix is found by `chosen`
        self._parent_id = parent_run_id if parent_run_id and len(parent_run_id) == RUN_ID_LENGTH else None
        self._exp: str | None = None
        self._kind: str | None = None  # the experiment's EXPERIMENT_KIND tag, as read or set
        self._client: Any = None

    @property
    def client(self) -> Any:
        """MLflow's client, made at first use (a handle that is never used touches no store)."""
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def experiment(self, create: bool = False) -> str | None:
        """The sweep's experiment id (created with `create`), None when there is none yet."""
        if self._exp is None:
            exp = self.client.get_experiment_by_name(self.sweep)
            if exp is not None:
                self._exp, self._kind = exp.experiment_id, exp.tags.get(EXPERIMENT_KIND)
            elif create:
                self._exp = self.client.create_experiment(self.sweep, artifact_location=artifact_root(self.uri),
                                                          tags={EXPERIMENT_KIND: TRAINING_RUNS})
                self._kind = TRAINING_RUNS
        if create and self._exp is not None and self._kind is None:  # made before the tag existed
            self.client.set_experiment_tag(self._exp, EXPERIMENT_KIND, TRAINING_RUNS)
            self._kind = TRAINING_RUNS
        return self._exp

    def parents(self, newest_only: bool = False) -> list:
        """Every parent run of the sweep (one per `--fresh` start), newest first."""
        exp = self.experiment()
        if exp is None:
            return []
        return self.client.search_runs(
            [exp], filter_string=f"tags.`{ROLE}` = 'sweep' and tags.sweep = '{_quote(self.sweep)}'",
            order_by=["attributes.start_time DESC"], max_results=1 if newest_only else 1000)

    def parent(self) -> Any:
        """The parent run given, else the newest; None when the sweep has none."""
        if self._parent_id is not None:
            return self.client.get_run(self._parent_id)
        if self.given_parent is not None:
            return self.chosen()[0]
        newest = self.parents(newest_only=True)
        return newest[0] if newest else None

    @property
    def parent_run_id(self) -> str | None:
        if self._parent_id is None:
            p = self.parent()
            self._parent_id = p.info.run_id if p is not None else None
        return self._parent_id

    def trials(self, status: str | None = None, ended_after_ms: int | None = None,
               evaluated_after_s: float | None = None, role: str = "trial") -> list:
        """The parent run's trial runs, optionally by status, by an end after `ended_after_ms` (epoch ms) and by
        an evaluation after `evaluated_after_s` (epoch s: the trainers' `eval_time`), newest first."""
        exp, parent = self.experiment(), (self.parent_run_id if self.experiment() is not None else None)
        if exp is None or parent is None:
            return []
        filt = (f"tags.`{ROLE}` = '{role}' and tags.sweep = '{_quote(self.sweep)}' "
                f"and tags.`mlflow.parentRunId` = '{parent}'")
        if status:
            filt += f" and attributes.status = '{status}'"
        if ended_after_ms is not None:
            filt += f" and attributes.end_time > {int(ended_after_ms)}"
        if evaluated_after_s is not None:
            filt += f" and metrics.eval_time > {float(evaluated_after_s):.3f}"
        out, token = [], None
        while True:
            page = self.client.search_runs([exp], filter_string=filt, order_by=["attributes.start_time DESC"],
                                           max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def chosen(self) -> tuple[Any, list]:
        """(the parent run a report or status reads, the sweep's other parent runs newest first): the one given
        (an id or a prefix of one: it must be a parent run of this sweep), else the newest. (None, []) when the
        sweep has no run yet."""
        every = self.parents()
        run_id = self.given_parent
        if run_id is None:
            return (every[0], every[1:]) if every else (None, [])
        match = [r for r in every if r.info.run_id == run_id or r.info.run_id.startswith(run_id)]
        if len(match) != 1:
            known = ", ".join(r.info.run_id for r in every) or "none"
            raise TrackingError(f"--parent {run_id}: {'no' if not match else 'more than one'} parent run of sweep "
                                f"{self.sweep!r} matches (its parent runs: {known})")
        return match[0], [r for r in every if r.info.run_id != match[0].info.run_id]

    def start(self, spec_text: str, fresh: bool = False) -> SweepContext:
        """Get or create the sweep's experiment and parent run (a new one with `fresh`); record the sweep YAML.
        This handle then reads that parent run."""
        exp_id = self.experiment(create=True)
        c = self.client
        parent = None if fresh else self.parent()
        if parent is None:
            run_id = c.create_run(exp_id, run_name=self.sweep, tags={ROLE: "sweep", "sweep": self.sweep}).info.run_id
        else:
            run_id = parent.info.run_id
            c.update_run(run_id, status="RUNNING")
        c.log_text(run_id, spec_text, "sweep.yaml")
        self._parent_id = run_id
        return SweepContext(uri=self.uri, experiment_id=exp_id, parent_run_id=run_id, sweep=self.sweep)

    def searched_lrs(self) -> dict[str, float]:
        """preset -> learning rate chosen by the sweep's lr search (empty without a parent run or a search)."""
        parent = self.parent() if self.experiment() is not None else None
        if parent is None:
            return {}
        return {k[len(LR_TAG):]: float(v) for k, v in parent.data.tags.items() if k.startswith(LR_TAG)}

    def finished(self, versions: Mapping[str, str] | None = None) -> tuple[set[str], list]:
        """(trial ids with a FINISHED run of the data of now, FINISHED runs whose data has changed since they
        ran), from one search: `versions` maps a trial id to the hash of its prepared data now (runs of versions
        before DATA_VERSION count as current; without `versions` every finished run does)."""
        done, stale = set(), []
        for r in self.trials("FINISHED"):
            if versions is not None and _stale(r, versions):
                stale.append(r)
            else:
                done.add(r.data.tags.get("trial_id"))
        return done, stale

    def supersede(self, runs: list, versions: Mapping[str, str]) -> None:
        """Take finished runs of changed data out of the sweep's trials (role SUPERSEDED, and the version that
        replaced theirs): kept in MLflow for their history, no longer done, paired or reported."""
        for r in runs:
            new = versions.get(r.data.tags.get("trial_id"), "")
            retry(lambda: self.client.set_tag(r.info.run_id, SUPERSEDED_BY, new))
            retry(lambda: self.client.set_tag(r.info.run_id, ROLE, SUPERSEDED))


def _stale(run: Any, versions: Mapping[str, str]) -> bool:
    had, now = run.data.tags.get(DATA_VERSION), versions.get(run.data.tags.get("trial_id"))
    return had is not None and now is not None and had != now


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
        for run in SweepRuns(ctx.uri, ctx.sweep, ctx.parent_run_id).trials("RUNNING"):
            with contextlib.suppress(Exception):
                c.set_tag(run.info.run_id, INTERRUPTED, "1")
                c.set_terminated(run.info.run_id, status="KILLED")
    elif status == "FINISHED":
        with contextlib.suppress(Exception):
            c.delete_tag(ctx.parent_run_id, INTERRUPTED)
    c.set_terminated(ctx.parent_run_id, status=status)


def find_trial_run(uri: str, exp_id: str, trial_id: str, parent_run_id: str, role: str = "trial"):
    """The newest run of one trial under a parent run (a trainer's own lookup: one query, by its ids)."""
    runs = client(uri).search_runs(
        [exp_id], filter_string=f"tags.`{ROLE}` = '{role}' and tags.trial_id = '{_quote(trial_id)}' "
                                f"and tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None
