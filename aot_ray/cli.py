"""aot-ray: plan | prepare | run | status | report | submit | slurm. Bad input ends with one line on stderr and
exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import AotError
from .storage import Storage
from .tracking.store import check_reachable, resolve_uri, sqlite_path, store_exists, ui_hint


SET_HELP = ("override a YAML field before validation (repeatable): a dotted path, e.g. --set "
            "defaults.train.steps=100, --set data.local.paths='[\"corpora/{lang}.txt\"]'; under grid the rest is the "
            "axis name: --set grid.seed='[0,1]', --set grid.optim.lr='[1.0e-3,2.0e-3]'")


def _sets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def _parent(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run to read (its id or a prefix of it; "
                                                      "default: the newest, i.e. the last --fresh start)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the sweep's "
                                          "run.tracking_uri, else sqlite:///mlflow.db in this folder)")
    p.add_argument("--storage", help="results, checkpoints and prepared data (default: the sweep's run.storage, "
                                     "else ./aot_results)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aot-ray", description="Arrow-of-Time sweeps on Ray Tune, tracked in MLflow.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="show the expanded trials, what is done, and what they cost; runs nothing")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--json", action="store_true", help="print a JSON list of trials")
    _common(p)
    _sets(p)

    p = sub.add_parser("prepare", help="prepare every distinct dataset of the sweep once (reuses what exists)")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--storage", help="where prepared data goes (default: the sweep's run.storage, else ./aot_results)")
    _sets(p)

    p = sub.add_parser("run", help="run the sweep through Ray Tune and print the AoT table")
    p.add_argument("sweep", help="sweep YAML")
    _common(p)
    _sets(p)
    p.add_argument("--address", help="address of a running Ray cluster (default: start Ray locally)")
    p.add_argument("--num-cpus", type=_count(1), help="CPUs for a local Ray (default: all)")
    p.add_argument("--num-gpus", type=_count(0), help="GPUs for a local Ray (default: all)")
    p.add_argument("--max-concurrent-trials", type=_count(1), help="override run.max_concurrent_trials")
    p.add_argument("--quiet", action="store_true", help="no Tune progress tables")
    p.add_argument("--stop-on-sign", action="store_true",
                   help="stop each forward/backward pair once the sequential test has established the sign of its "
                        "gap (run.stop_on_sign in the YAML sets the level and when; this flag adds the defaults)")
    p.add_argument("--shared-storage", action="store_true",
                   help="the local --storage path (and SQLite file) is on a file system every node mounts")
    p.add_argument("--fixed-cluster", action="store_true",
                   help="the cluster at --address cannot grow (a Slurm job): a trial no node can hold is refused "
                        "instead of waiting for an autoscaler")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--restart-errored", action="store_true",
                       help="when resuming, start errored trials from scratch instead of from their checkpoints")
    again.add_argument("--fresh", action="store_true",
                       help="start a new sweep: a new parent run and Tune state (earlier runs stay in MLflow)")

    p = sub.add_parser("submit", help="run a sweep on a Ray cluster made with `ray up CLUSTER.yaml`, detached")
    p.add_argument("cluster", help="cluster YAML (cluster/aws.yaml, gcp.yaml, onprem.yaml)")
    p.add_argument("sweep", help="sweep YAML, inside this project")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="options for `aot-ray run` on the head, after --")

    p = sub.add_parser("slurm", help="check a sweep, then queue it as a Slurm job (cluster/slurm.sbatch): Ray on the "
                                     "job's nodes, requeued at its time limit until the sweep is done")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--nodes", type=_count(1), default=1, help="nodes of the job (default 1)")
    p.add_argument("--gpus-per-node", type=_count(0), default=0, help="GPUs per node (default 0)")
    p.add_argument("--cpus-per-task", type=_count(1), help="CPUs per node for Ray (default: Slurm's, usually 1)")
    p.add_argument("--time", dest="time_limit", help="time limit of each job, e.g. 24:00:00 (it requeues itself)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--sbatch", dest="sbatch_args", action="append", default=[], metavar="ARG",
                   help="another sbatch option, e.g. --sbatch=--qos=long (repeatable)")
    # options for `aot-ray run` in the job go after `--` (split off in main: a REMAINDER positional here would
    # also swallow this command's own options written after the sweep)
    p.set_defaults(run_args=[])

    p = sub.add_parser("status", help="list the sweep's trials with state, step, last validation loss and error")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (as for run)")
    _parent(p)
    _sets(p)

    p = sub.add_parser("report", help="the AoT report from MLflow: pairs with intervals, seed means, trends, "
                                      "sign tests, plots, report.md (also attached to the sweep's parent run)")
    p.add_argument("sweep", help="sweep YAML, or a sweep name")
    _common(p)
    p.add_argument("--out", help="folder for the CSVs, plots and report.md (default: <storage>/reports/<sweep>)")
    p.add_argument("--json", action="store_true", help="print the tables as JSON")
    p.add_argument("--watch", type=float, nargs="?", const=60.0, metavar="SECONDS",
                   help="re-render every SECONDS (default 60) while the sweep runs; ends after the sweep does")
    p.add_argument("--conf", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--alpha", type=float, default=None,
                   help="error rate of the sequential sign test over seeds (default: the sweep's, else 0.05)")
    p.add_argument("--overfit-rise", type=float, default=None, metavar="FRACTION",
                   help="flag a trial whose validation loss rose this much from its best (default 0.05)")
    p.add_argument("--max-epochs", type=float, default=None,
                   help="flag a trial that saw its training split more times than this (default 20)")
    p.add_argument("--no-plots", action="store_true", help="tables only (faster)")
    p.add_argument("--reference", choices=("paper", "none"), default="paper",
                   help="put the paper's values beside the cells whose setting matches one (default), or not")
    _parent(p)
    _sets(p)
    return ap


def _plan(args: argparse.Namespace) -> int:
    from .sweep.render import plan_text
    from .spec import load_sweep
    from .sweep import resolve_storage
    from .sweep.preview import plan

    spec = load_sweep(args.sweep, args.sets)
    result = plan(spec, resolve_uri(args.tracking_uri, spec.run.tracking_uri), resolve_storage(args.storage, spec))
    if args.json:
        print(json.dumps(_json_safe(result["trials"]), indent=2, allow_nan=False))
        if result["unfit"]:
            print(f"error: {result['unfit']}", file=sys.stderr)
        return 2 if result["unfit"] else 0
    print(plan_text(result, spec))
    if result["unfit"]:
        print(f"error: {result['unfit']}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> int:
    from .aggregate import render
    from .spec import load_sweep_text
    from .sweep import resolve_storage
    from .sweep import RunOptions, run

    spec, text = load_sweep_text(args.sweep, args.sets)
    uri = resolve_uri(args.tracking_uri, spec.run.tracking_uri)
    storage = resolve_storage(args.storage, spec)
    print(f"sweep {spec.name}: tracking {uri}, storage {storage}")
    options = RunOptions(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                         max_concurrent_trials=args.max_concurrent_trials, shared_storage=args.shared_storage,
                         fixed_cluster=args.fixed_cluster,
                         stop_on_sign=args.stop_on_sign, restart_errored=args.restart_errored, fresh=args.fresh,
                         verbose=0 if args.quiet else 1)
    from .execution.interrupt import terminable

    with terminable():  # SIGTERM, like Ctrl-C, at any moment: the driver's clean-up runs
        out = run(spec, text, uri=uri, storage=storage, options=options)
    print()
    print(render(out.report))
    for f in out.report["files"]:
        print(f"wrote {f}")
    print(ui_hint(uri, spec.name))
    if out.failed:
        for o in out.failed:
            print(f"trial {o.trial_id} failed: {o.error}", file=sys.stderr)
        return 1
    return 0


def _data_versions(spec: Any) -> dict[str, str] | None:
    """trial id -> the hash of the data it would read now, so the report leaves out runs of changed data; None
    where the corpora cannot be read here (the report then takes every finished run as current)."""
    from .sweep import SweepPlan

    try:
        return SweepPlan.of(spec).versions
    except Exception:
        return None


def _report(args: argparse.Namespace) -> int:
    from .aggregate import render, report, watch

    path = Path(args.sweep)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from .spec import load_sweep
        from .sweep import resolve_storage

        spec = load_sweep(args.sweep, args.sets)
        name, uri = spec.name, resolve_uri(args.tracking_uri, spec.run.tracking_uri)
        storage = resolve_storage(args.storage, spec)
        versions = _data_versions(spec)
    else:
        name, uri = args.sweep, resolve_uri(args.tracking_uri)
        storage = str(Path(args.storage or "aot_results").resolve())
        versions = None  # by name only: the data of now is not known here
    if not store_exists(uri):
        raise AotError(f"no MLflow database at {sqlite_path(uri)}; run the sweep first or pass --tracking-uri")
    check_reachable(uri, write=False)  # a read-only store is read; what cannot be written is said
    for flag in ("conf", "alpha"):
        if getattr(args, flag) is not None and not 0 < getattr(args, flag) < 1:
            raise AotError(f"--{flag} must be between 0 and 1, got {getattr(args, flag)}")
    out_dir = Path(args.out) if args.out else Storage.of(storage).reports(name)
    overfit = {k: v for k, v in (("rise", args.overfit_rise), ("max_epochs", args.max_epochs)) if v is not None}
    if any(v <= 0 for v in overfit.values()):
        raise AotError("--overfit-rise and --max-epochs must be positive")
    options = {"conf": args.conf, "alpha": args.alpha, "with_plots": not args.no_plots, "overfit": overfit,
               "parent": args.parent, "reference": args.reference, "versions": versions}
    if args.watch is not None:
        watch(uri, name, out_dir, args.watch, **options)
        return 0
    result = report(uri, name, out_dir, **options)
    if not result["rows"] and not result["running"] and not result["failed_cells"]:
        raise AotError(f"no finished runs for sweep {name!r} in {uri}")
    if args.json:
        tables = ("pairs", "summary", "trends", "token_trends", "across", "references", "signs", "sequence_rows")
        out = {k: [{kk: vv for kk, vv in r.items() if kk != "points"} for r in result[k]] for k in tables}
        out.update(orphans=result["orphans"], failed_cells=result["failed_cells"])
        print(json.dumps(_json_safe(out), indent=2, default=str, allow_nan=False))
    else:
        print(render(result))
        for f in result["files"]:
            print(f"wrote {f}")
    return 0


def _slurm(args: argparse.Namespace) -> int:
    from .cluster.slurm_job import submit

    job = submit(args.sweep, args.run_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                 cpus_per_task=args.cpus_per_task, time_limit=args.time_limit, partition=args.partition,
                 account=args.account, sbatch_args=args.sbatch_args)
    print(f"queued Slurm job {job}: watch with `squeue -j {job}` and `tail -f aot-ray-aot-ray-{job}.out`; stop "
          f"gracefully with `scancel --batch --signal=INT {job}` (neither that nor `scancel {job}` requeues; "
          f"`aot-ray slurm` again resumes the sweep)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from .cluster.submit import submit

    rest = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    submit(args.cluster, args.sweep, rest)
    return 0


def _status(args: argparse.Namespace) -> int:
    from .aggregate import format_table
    from .spec import load_sweep
    from .sweep.status import status

    spec = load_sweep(args.sweep, args.sets)
    uri = resolve_uri(args.tracking_uri, spec.run.tracking_uri)
    check_reachable(uri, write=False)  # an unreachable or invalid store is an error, not a sweep where nothing ran
    rows = status(spec, uri, args.parent)
    if args.json:
        print(json.dumps(_json_safe([{k: r[k] for k in ("trial_id", "state", "step", "val_loss", "error")}
                                     for r in rows]), indent=2, allow_nan=False))
        return 0
    print(format_table(rows, ["trial_id", "state", "step", "val_loss", "error"]))
    from .aggregate.text import parent_info, parent_text
    from .tracking import chosen_parent

    if store_exists(uri):
        chosen, others = chosen_parent(uri, spec.name, args.parent)
        if chosen is not None:
            print("\n" + parent_text(parent_info(chosen), [parent_info(r) for r in others]))
    counts = {s: sum(r["state"] == s for r in rows) for s in ("TERMINATED", "RUNNING", "ERROR", "INTERRUPTED",
                                                              "PENDING")}
    print("\n" + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    from .tracking.lease import holder

    h = holder(uri, spec.name) if store_exists(uri) else None
    print(f"driver: {h.describe()}" if h else "driver: none (no `aot-ray run` of this sweep holds its lease)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .spec import load_sweep
    from .sweep import resolve_storage
    from .sweep import prepare_local

    spec = load_sweep(args.sweep, args.sets)
    storage = resolve_storage(args.storage, spec)
    Storage.of(storage).check_writable()
    prepare_local(spec, storage, progress=sys.stderr.isatty())
    return 0


def _count(least: int):
    """An argparse type: an integer of at least `least` (argparse then names the flag in its one-line error)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {n}")
        return n

    return parse


def _json_safe(obj):
    """NaN and infinities become null: JSON has no NaN, and a reader's parser would reject the output."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = None
    if argv[:1] == ["slurm"] and "--" in argv:  # `aot-ray slurm SWEEP [options] -- [aot-ray run options]`
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    if rest is not None:
        args.run_args = rest
    try:
        return {"plan": _plan, "run": _run, "report": _report, "prepare": _prepare, "status": _status,
                "submit": _submit, "slurm": _slurm}[args.command](args)
    except AotError as e:
        print(f"aot-ray: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave cannot be written or read (an unwritable storage, --out /proc/x)
        if e.filename is None:
            raise
        print(f"aot-ray: error: cannot use {e.filename}: {e.strerror or e}; pick another path", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"aot-ray: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
