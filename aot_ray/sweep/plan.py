"""The plan of a sweep, built once from a loaded sweep and shared by `plan` (which prints it), `prepare` and
`run` (which execute it): its trials (`expand`, once per sweep state), the version of the data each one reads
(the content hash of its prepared data: part of its identity), the distinct datasets to prepare, and the GPU
memory check of every trial against the GPU it will get. What is done in MLflow is asked of it with the store
at hand (`done`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..spec import SweepSpec, TrialSpec, expand
from ..tracking import finished_trial_ids, stale_trial_runs
from ..tracking.store import check_reachable, store_exists


def where_of(trial: TrialSpec) -> str:
    return f"data.{trial.dataset}"


def data_hashes(trials: list[TrialSpec]) -> dict[str, str]:
    """trial id -> content hash of the prepared data it reads."""
    from ..data.prepare import data_hash

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
    from ..data.prepare import vocab_size_of
    from ..memory import check_trial, declared_gpu_bytes

    out = {}
    for t in trials:
        if t.resources.gpu <= 0:
            continue
        gpu_bytes, source = discovered(t) if discovered else (None, "")
        if gpu_bytes is None:
            gpu_bytes, source = declared_gpu_bytes(t, run_spec.gpu_memory_gb, run_spec.gpu_memory_gb_by_resource)
        out[t.trial_id] = check_trial(t, vocab_size_of(t.data), gpu_bytes, source)
    return out


def unfit_message(trials: list[TrialSpec], checks: dict[str, Any]) -> str | None:
    """One line naming the first trial that cannot fit its GPU share (and how many others), or None."""
    from ..data.prepare import vocab_size_of
    from ..memory import refusal

    bad = [t for t in trials if t.trial_id in checks and checks[t.trial_id].fits is False]
    if not bad:
        return None
    more = f" ({len(bad) - 1} more trial(s) do not fit either)" if len(bad) > 1 else ""
    return refusal(bad[0], vocab_size_of(bad[0].data), checks[bad[0].trial_id]) + more




@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """A sweep's plan: what `plan` shows is what `run` executes."""

    spec: SweepSpec
    trials: list[TrialSpec]
    versions: dict[str, str]  # trial id -> the content hash of the prepared data it reads
    datasets: dict[str, tuple[str, Any, str | None]]  # data hash -> (where, dataset spec, language)
    by_id: dict[str, TrialSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: SweepSpec) -> "SweepPlan":
        """Expand the sweep and version its data (reads local file metadata; fails fast on a missing file)."""
        trials = expand(spec)
        versions = data_hashes(trials)
        return cls(spec=spec, trials=trials, versions=versions, datasets=distinct_datasets(trials, versions),
                   by_id={t.trial_id: t for t in trials})

    def memory_checks(self, discovered: GpuSize | None = None) -> dict[str, Any]:
        return memory_checks(self.trials, self.spec.run, discovered)

    def unfit(self, checks: dict[str, Any]) -> str | None:
        return unfit_message(self.trials, checks)

    def done(self, uri: str, parent_run_id: str | None = None) -> tuple[set[str], set[str]]:
        """(trials finished in MLflow on the data of now, finished ones whose data changed since): from the
        sweep's newest parent run, or `parent_run_id`."""
        done = finished_trial_ids(uri, self.spec.name, parent_run_id, versions=self.versions)
        stale = {r.data.tags.get("trial_id") for r in stale_trial_runs(uri, self.spec.name, self.versions,
                                                                        parent_run_id)}
        return done, stale

    def done_offline(self, uri: str) -> tuple[set[str], set[str], str | None]:
        """`done`, without creating a store that does not exist yet, and a note instead of an error when the
        store cannot be read (planning works offline)."""
        if not store_exists(uri):
            return set(), set(), None
        try:
            check_reachable(uri)
            return (*self.done(uri), None)
        except Exception as e:
            return set(), set(), f"tracking store not readable ({str(e).splitlines()[0]}); status unknown"
