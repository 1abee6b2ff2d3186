"""A sweep resolved once, as every command and cluster entry takes it: the spec with `--set` and the searched
learning rates applied, its storage, its tracking store and one handle on its runs there. `resolve` reads a sweep
YAML and the flags that place it (`--tracking-uri`, `--storage`, `--parent`); `ResolvedSweep.of` places a spec
already loaded; `by_name` is a report's sweep given by name only."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Mapping

from ..spec import SweepSpec, load_sweep_text, with_learning_rates
from ..storage import Storage
from ..tracking import SweepRuns
from ..tracking.store import resolve_uri, store_exists
from .sweep_plan import SweepPlan


@dataclass(frozen=True, kw_only=True)
class ResolvedSweep:
    """One sweep, placed: what `plan`, `prepare`, `run`, `status`, `report`, `submit` and `slurm` act on."""

    name: str
    uri: str  # the MLflow tracking store
    storage: Storage
    runs: SweepRuns  # the sweep's runs there (its parent run: `--parent`, else the newest)
    spec: SweepSpec | None = None  # --set and the searched learning rates applied; None: a sweep known by name only
    declared: SweepSpec | None = None  # the spec before the searched rates (what an lr search searches)
    text: str = ""  # the YAML that produced the spec (recorded on the parent run)
    source: str = ""  # the YAML's path, as given
    learning_rates: Mapping[str, float] = field(default_factory=dict)  # preset -> rate found by the sweep's search

    @classmethod
    def of(cls, spec: SweepSpec, text: str = "", *, uri: str, storage: str | Storage, parent: str | None = None,
           source: str = "", offline: bool = True) -> "ResolvedSweep":
        """A loaded spec placed at `uri` and `storage`, with the learning rates its search recorded there (read
        when the store exists; `offline`: a store that cannot be read leaves them unknown instead of failing)."""
        runs = SweepRuns(uri, spec.name, parent)
        store = storage if isinstance(storage, Storage) else Storage.of(storage)
        out = cls(name=spec.name, uri=uri, storage=store, runs=runs, spec=spec, declared=spec, text=text,
                  source=source)
        if spec.lr_search is None or not store_exists(uri):
            return out
        found: dict[str, float] = {}
        with contextlib.suppress(*((Exception,) if offline else ())):
            found = runs.searched_lrs()
        return out.with_learning_rates(found)

    def with_learning_rates(self, found: Mapping[str, float]) -> "ResolvedSweep":
        """The sweep with the rates of its search: applied once every preset of the grid has one (each rate is
        part of its trials' identity, so a sweep with some rates unknown keeps the declared spec)."""
        assert self.declared is not None
        spec = self.declared
        if set(spec.grid.model) <= set(found):
            spec = with_learning_rates(spec, dict(found))
        return replace(self, spec=spec, learning_rates=dict(found))

    def plan(self) -> SweepPlan:
        """The sweep's trials, their data versions and datasets (reads local file metadata)."""
        assert self.spec is not None
        return SweepPlan.of(self.spec)

    def at(self, uri: str) -> "ResolvedSweep":
        """The same sweep tracked in another store (a Slurm job's own server), its searched rates read there."""
        if self.declared is None:
            return replace(self, uri=uri, runs=SweepRuns(uri, self.name, self.runs.given_parent))
        return ResolvedSweep.of(self.declared, self.text, uri=uri, storage=self.storage,
                                parent=self.runs.given_parent, source=self.source)


def resolve(path: str, *, sets: list[str] | tuple[str, ...] = (), tracking_uri: str | None = None,
            storage: str | None = None, parent: str | None = None) -> ResolvedSweep:
    """A sweep YAML with its `--set` overrides, placed by the flags given, else by its `run:` section, else by the
    defaults (`resolve_uri`, `Storage.resolve`)."""
    spec, text = load_sweep_text(path, list(sets))
    return ResolvedSweep.of(spec, text, uri=resolve_uri(tracking_uri, spec.run.tracking_uri),
                            storage=Storage.resolve(storage, spec.run.storage), parent=parent, source=str(path))


def by_name(name: str, *, tracking_uri: str | None = None, storage: str | None = None,
            parent: str | None = None) -> ResolvedSweep:
    """A sweep known only by its name (a report read from MLflow without its YAML)."""
    uri = resolve_uri(tracking_uri)
    return ResolvedSweep(name=name, uri=uri, storage=Storage.resolve(storage), runs=SweepRuns(uri, name, parent))
