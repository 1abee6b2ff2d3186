"""The command line's settings beside a sweep's YAML, in one place: `RunOptions` (the flags of `aot-ray run`, met
with the YAML's `run:` section by `run_spec`) and where a sweep's storage is when no flag names it."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..spec import RunSpec, SignStopSpec, SweepSpec
from ..storage import is_remote


def resolve_storage(flag: str | None, spec: SweepSpec, cwd: str | Path | None = None) -> str:
    """--storage, else the sweep's run.storage, else ./aot_results; a local path made absolute (the trainers and
    Tune run in other working folders)."""
    raw = flag or spec.run.storage or "aot_results"
    if is_remote(raw):
        return raw
    return str((Path(cwd or os.getcwd()) / raw).resolve())


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The flags of `aot-ray run` beside the sweep YAML. `run_spec` is the one place where they meet the sweep's
    `run:` section: a flag that was given wins, one that was not keeps the YAML's value."""
    address: str | None = None  # a running Ray cluster (else $RAY_ADDRESS, else a Ray of this process's own)
    num_cpus: int | None = None  # the resources of that own Ray
    num_gpus: int | None = None
    max_concurrent_trials: int | None = None
    shared_storage: bool = False  # a local storage path every node mounts
    fixed_cluster: bool = False  # the cluster cannot grow (a Slurm job): a trial no node can hold is refused
    stop_on_sign: bool = False  # run.stop_on_sign with its defaults, where the YAML has none
    restart_errored: bool = False  # errored trials start over instead of resuming
    fresh: bool = False  # a new parent run and Tune state; the earlier ones stay untouched
    verbose: int = 1

    def run_spec(self, run: RunSpec) -> RunSpec:
        if self.max_concurrent_trials is not None:
            run = replace(run, max_concurrent_trials=self.max_concurrent_trials)
        if self.stop_on_sign and run.stop_on_sign is None:
            run = replace(run, stop_on_sign=SignStopSpec())
        if self.shared_storage:
            run = replace(run, shared_storage=True)
        return run
