"""Sweep orchestration without Ray specifics: plan (what would run, what is done, what it costs), prepare the
data each distinct dataset needs once, and run (tracking checks first, then Tune, then the AoT report)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import AotError, TrackingError
from .models import count_params, resolve_shape
from .spec import SweepSpec, TrialSpec, expand
from .spec.schema import DatasetSpec


def resolve_storage(flag: str | None, spec: SweepSpec, cwd: str | Path | None = None) -> str:
    raw = flag or spec.run.storage or "aot_results"
    if "://" in raw:
        return raw
    return str((Path(cwd or os.getcwd()) / raw).resolve())


def trial_cost(trial: TrialSpec) -> dict[str, int]:
    from .data.prepare import tokenizer_for

    vocab = tokenizer_for(trial.data).vocab_size
    n = count_params(resolve_shape(trial.model), vocab, trial.context_length, trial.model.tie_embeddings)
    tokens = trial.train.steps * trial.train.batch_size * trial.train.grad_accum * trial.context_length
    return {"n_params": n, "tokens": tokens, "flops": 6 * n * tokens}


def datasets_of(trials: list[TrialSpec]) -> dict[str, tuple[str, DatasetSpec]]:
    """Distinct datasets by content hash -> (a name that uses it, its spec)."""
    from .data.prepare import data_hash

    out: dict[str, tuple[str, DatasetSpec]] = {}
    for t in trials:
        out.setdefault(data_hash(t.data), (t.dataset, t.data))
    return out


def done_trials(uri: str, sweep: str) -> tuple[set[str], str | None]:
    """Finished trial ids, without creating a store that does not exist yet; (ids, note if unknown)."""
    from .tracking import check_reachable, finished_trial_ids

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return set(), None
    try:
        check_reachable(uri)
        return finished_trial_ids(uri, sweep), None
    except (TrackingError, Exception) as e:  # planning must work offline: say so instead of failing
        return set(), f"tracking store not readable ({str(e).splitlines()[0]}); status unknown"


def plan(spec: SweepSpec, uri: str, storage: str) -> dict[str, Any]:
    from .data.prepare import data_dir, is_prepared
    from .tune import resources_of

    trials = expand(spec)
    done, note = done_trials(uri, spec.name)
    rows = []
    for t in trials:
        rows.append({
            "trial_id": t.trial_id, "pair_key": t.pair_key, "cell_key": t.cell_key, "direction": t.direction,
            "dataset": t.dataset, "model": t.model.preset, "context_length": t.context_length, "seed": t.seed,
            "axes": dict(t.axes), "resources": resources_of(t), **trial_cost(t),
            "status": "done" if t.trial_id in done else "pending",
        })
    data = [
        {"dataset": name, "hash": h, "path": str(data_dir(storage, d)), "prepared": is_prepared(storage, d)}
        for h, (name, d) in datasets_of(trials).items()
    ]
    return {"sweep": spec.name, "tracking_uri": uri, "storage": storage, "trials": rows, "datasets": data, "note": note}


def prepare_data(trials: list[TrialSpec], storage: str, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Prepare every distinct dataset once (issue #3 spreads this over Ray tasks for large corpora)."""
    from .data.prepare import prepare

    out = []
    for h, (name, d) in datasets_of(trials).items():
        prepared, built = prepare(d, storage)
        m = prepared.manifest
        word = "prepared" if built else "reused"
        say(f"{word} {name} ({h}): {m['documents']['train']}+{m['documents']['val']} lines, "
            f"{m['tokens']['train']}+{m['tokens']['val']} tokens (train+val) at {prepared.path}")
        out.append({"dataset": name, "hash": h, "built": built, "path": str(prepared.path)})
    return out


@dataclass
class RunOutcome:
    ran: list[Any]
    skipped: list[str]
    report: dict[str, Any]

    @property
    def failed(self) -> list[Any]:
        return [o for o in self.ran if not o.ok]


def run(
    spec: SweepSpec,
    spec_text: str,
    *,
    uri: str,
    storage: str,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    max_concurrent_trials: int | None = None,
    verbose: int = 1,
    say: Callable[[str], None] = print,
) -> RunOutcome:
    from dataclasses import replace

    from . import aggregate, tracking
    from .tune import run_trials

    tracking.check_reachable(uri)  # before anything starts
    if "://" not in storage:
        try:
            Path(storage).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AotError(f"cannot create storage folder {storage} ({e.strerror}); pass --storage") from None
    trials = expand(spec)
    prepare_data(trials, storage, say)
    ctx = tracking.start_sweep(uri, spec.name, spec_text)
    done = tracking.finished_trial_ids(uri, spec.name)
    pending = [t for t in trials if t.trial_id not in done]
    skipped = [t.trial_id for t in trials if t.trial_id in done]
    if skipped:
        say(f"{len(skipped)} of {len(trials)} trials already finished in MLflow; running {len(pending)}")
    run_spec = spec.run if max_concurrent_trials is None else replace(spec.run, max_concurrent_trials=max_concurrent_trials)
    outcomes = []
    status = "FINISHED"
    try:
        if pending:
            outcomes = run_trials(pending, ctx, storage=storage, run=run_spec, address=address,
                                  num_cpus=num_cpus, num_gpus=num_gpus, verbose=verbose)
        if any(not o.ok for o in outcomes):
            status = "FAILED"
    except BaseException:
        status = "KILLED"
        raise
    finally:
        tracking.end_sweep(ctx, status)
    out_dir = Path(storage) / "reports" / spec.name if "://" not in storage else None
    result = aggregate.report(uri, spec.name, out_dir)
    return RunOutcome(ran=outcomes, skipped=skipped, report=result)


def read_spec(path: str) -> tuple[SweepSpec, str]:
    from .spec import load_sweep

    spec = load_sweep(path)
    return spec, Path(path).read_text()


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr)
