"""The Optuna learning-rate search that can precede a sweep's grid: per model preset, Ray Tune with Optuna's TPE
sampler (OptunaSearch) over a log-uniform lr. MLflow is its record: a resumed search tells Optuna the candidates
that finished earlier and runs only the rest."""

from __future__ import annotations

from typing import Any

from ..errors import AotError
from ..spec import lr_search_trials
from ..spec.schema import RunSpec
from ..storage import Storage
from ..tracking import LR_SEARCH, ROLE, SweepContext, TrialTracker, client, find_trial_run, retry
from .tune import environ as tune_environ, tune_loggers, tune_output, tune_resources, tune_verbosity


def _lr_trainable(config: dict[str, Any], spec: Any, preset: str, ctx: SweepContext, data: str) -> None:
    """One Optuna candidate: short runs at config["lr"] in each searched direction (one MLflow run each, role
    lr-search); the objective is their mean final validation loss. A direction already FINISHED in MLflow (a
    driver killed after it) counts as it is, never trained or reopened again."""
    from ray import tune

    from ..train.tracked_run import train_tracked  # torch: in the candidate's process only

    losses = []
    for trial in lr_search_trials(spec, preset, config["lr"]):
        run = retry(lambda: find_trial_run(ctx.uri, ctx.experiment_id, trial.trial_id, ctx.parent_run_id,
                                           "lr-search"))
        if run is not None and run.info.status == "FINISHED" and "final_val_loss" in run.data.metrics:
            losses.append(run.data.metrics["final_val_loss"])
            continue
        tracker = TrialTracker(ctx, trial, role="lr-search")
        tracker.extra_tags[LR_SEARCH] = preset
        losses.append(train_tracked(trial, tracker, None, data=data, interrupts_resume=False).val_loss)
    tune.report({"val_loss": sum(losses) / len(losses), "lr": config["lr"]})


def searched_candidates(ctx: SweepContext, spec: Any, preset: str) -> dict[float, float]:
    """lr -> mean final validation loss of every candidate of this preset's search whose runs (one per searched
    direction) are all FINISHED under this sweep's parent run: they count as trials of a resumed search."""

    c = client(ctx.uri)
    runs = retry(lambda: c.search_runs(
        [ctx.experiment_id], filter_string=f"tags.`{ROLE}` = 'lr-search' and tags.`{LR_SEARCH}` = '{preset}' and "
                                         f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and "
                                         f"attributes.status = 'FINISHED'", max_results=10000))
    by_lr: dict[float, dict[str, float]] = {}
    for r in runs:
        if "optim.lr" in r.data.params and "final_val_loss" in r.data.metrics:
            by_lr.setdefault(float(r.data.params["optim.lr"]), {})[r.data.tags.get("direction", "")] = \
                r.data.metrics["final_val_loss"]
    need = set(spec.lr_search.directions)
    return {lr: sum(d[k] for k in need) / len(need) for lr, d in by_lr.items() if need <= set(d)}


def search_lr(spec: Any, preset: str, ctx: SweepContext, *, data: str, storage: Storage, experiment: str,
              run: RunSpec, verbose: int = 1) -> tuple[float, float]:
    """Ray Tune with Optuna's TPE sampler over log-uniform lr for one preset; returns (best lr, its loss).
    MLflow is the search's record: a resumed search tells Optuna the candidates that finished earlier (they
    count towards lr_search.trials, and the sampler learns from them) and runs only the rest."""
    from ray import tune


    ls = spec.lr_search
    done = searched_candidates(ctx, spec, preset)
    results = dict(done)
    remaining = ls.trials - len(done)
    if remaining > 0:
        probe = lr_search_trials(spec, preset, ls.low)[0]
        trainable = tune.with_parameters(_lr_trainable, spec=spec, preset=preset, ctx=ctx, data=data)
        trainable = tune.with_resources(trainable, tune_resources(probe))
        with tune_environ(tune_output(verbose)):
            grid = _new_search(trainable, ls, run, experiment, storage, verbose, done, remaining).fit()
        errors = []
        for r in grid:
            if r.error is None and r.metrics and r.metrics.get("val_loss") is not None:
                results[float(r.config["lr"])] = float(r.metrics["val_loss"])
            elif r.error is not None:
                errors.append(str(r.error).strip().splitlines()[-1])
        if not results:
            raise AotError(f"the learning-rate search for {preset} had no successful trial "
                           f"({'; '.join(errors) or 'no results'})")
    best = min(results, key=results.__getitem__)
    return best, results[best]


def _new_search(trainable: Any, ls: Any, run: RunSpec, experiment: str, storage: Storage, verbose: int,
                done: dict[float, float], samples: int) -> Any:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(
        space={"lr": optuna.distributions.FloatDistribution(ls.low, ls.high, log=True)}, metric="val_loss",
        mode="min", sampler=optuna.samplers.TPESampler(seed=ls.seed),
        points_to_evaluate=[{"lr": lr} for lr in done] or None, evaluated_rewards=list(done.values()) or None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=samples,
                                    max_concurrent_trials=run.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(name=experiment, storage_path=storage.root, verbose=tune_verbosity(verbose),
                                  callbacks=tune_loggers(),
                                  failure_config=tune.FailureConfig(max_failures=run.max_failures)),
    )
