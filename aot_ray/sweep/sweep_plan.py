"""The plan of a sweep, built once from a loaded sweep and shared by `plan` (which prints it), `prepare` and
`run` (which execute it): its trials (`expand`, once per sweep state), the version of the data each one reads
(the content hash of its prepared data: part of its identity), the distinct datasets to prepare, and the GPU
memory check of every trial against the GPU it will get. What is done in MLflow is asked of it with the store
at hand (`done`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..costs import trial_vocab
from ..data.prepare import data_hash
from ..gpu_memory import check_trial, declared_gpu_bytes, refusal
from ..spec import SweepSpec, TrialSpec, expand
from ..tracking import SweepRuns
from ..tracking.store import check_reachable, store_exists


def where_of(trial: TrialSpec) -> str:
    return f"data.{trial.dataset}"


def data_hashes(trials: list[TrialSpec]) -> dict[str, str]:
    """trial id -> content hash of the prepared data it reads."""

    cache: dict[int, str] = {}
    out = {}
    for t in trials:
        key = id(t.data)
        if key not in cache:
            cache[key] = data_hash(t.data, where_of(t))
        out[t.trial_id] = cache[key]
    return out


def distinct_datasets(trials: list[TrialSpec], hashes: dict[str, str]) -> dict[str, tuple[str, Any, str | None]]:
    """hash -> (where, dataset spec, language) for each distinct dataset of the sweep."""
    out: dict[str, tuple[str, Any, str | None]] = {}
    for t in trials:
        out.setdefault(hashes[t.trial_id], (where_of(t), t.data, t.language))
    return out


GpuSize = Callable[[TrialSpec], "tuple[int | None, str]"]


def memory_checks(trials: list[TrialSpec], run_spec: Any, discovered: GpuSize | None = None) -> dict[str, Any]:
    """trial id -> MemoryCheck for every GPU trial: its micro-batch against its share of the GPU it will get. The
    GPU's size comes from the cluster (`discovered`), else from what the sweep declares, else it is unknown."""

    out = {}
    for t in trials:
        if t.resources.gpu <= 0:
            continue
        gpu_bytes, source = discovered(t) if discovered else (None, "")
        if gpu_bytes is None:
            gpu_bytes, source = declared_gpu_bytes(t, run_spec.gpu_memory_gb, run_spec.gpu_memory_gb_by_resource)
        out[t.trial_id] = check_trial(t, trial_vocab(t), gpu_bytes, source)
    return out


def unfit_message(trials: list[TrialSpec], checks: dict[str, Any]) -> str | None:
    """One line naming the first trial that cannot fit its GPU share (and how many others), or None."""

    bad = [t for t in trials if t.trial_id in checks and checks[t.trial_id].fits is False]
    if not bad:
        return None
    more = f" ({len(bad) - 1} more trial(s) do not fit either)" if len(bad) > 1 else ""
    return refusal(bad[0], trial_vocab(bad[0]), checks[bad[0].trial_id]) + more




@dataclass(frozen=True, kw_only=True)
class Standing:
    """Where a sweep's trials stand in MLflow."""

    done: frozenset[str]  # trial ids finished on the data of now
    stale: tuple  # FINISHED runs whose data changed since they ran
    pending: tuple[TrialSpec, ...]  # the trials to run (stale ones included)

    @property
    def stale_ids(self) -> set[str]:
        return {r.data.tags.get("trial_id") for r in self.stale}


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """A sweep's plan: what `plan` shows is what `run` executes."""

    spec: SweepSpec
    trials: list[TrialSpec]
    versions: dict[str, str]  # trial id -> the content hash of the prepared data it reads
    datasets: dict[str, tuple[str, Any, str | None]]  # data hash -> (where, dataset spec, language)

    @classmethod
    def of(cls, spec: SweepSpec) -> "SweepPlan":
        """Expand the sweep and version its data (reads local file metadata; fails fast on a missing file)."""
        trials = expand(spec)
        versions = data_hashes(trials)
        return cls(spec=spec, trials=trials, versions=versions, datasets=distinct_datasets(trials, versions))

    def memory_checks(self, discovered: GpuSize | None = None) -> dict[str, Any]:
        return memory_checks(self.trials, self.spec.run, discovered)

    def unfit(self, checks: dict[str, Any]) -> str | None:
        return unfit_message(self.trials, checks)

    def standing(self, runs: SweepRuns) -> Standing:
        """Which trials are done in MLflow (on the data of now), which finished on data that has changed since
        (stale: they train again), and which are to run: what `plan` shows and what `run` acts on, from one
        search of the parent run `runs` reads."""
        done, stale = runs.finished(self.versions)
        return Standing(done=frozenset(done), stale=tuple(stale),
                        pending=tuple(t for t in self.trials if t.trial_id not in done))

    def standing_offline(self, runs: SweepRuns) -> tuple[Standing, str | None]:
        """`standing`, without creating a store that does not exist yet, and with a note instead of an error when
        the store cannot be read (planning works offline): then every trial is pending."""
        nothing = Standing(done=frozenset(), stale=(), pending=tuple(self.trials))
        if not store_exists(runs.uri):
            return nothing, None
        try:
            check_reachable(runs.uri)
            return self.standing(runs), None
        except Exception as e:
            return nothing, f"tracking store not readable ({str(e).splitlines()[0]}); status unknown"
