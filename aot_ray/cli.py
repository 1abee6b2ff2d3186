"""aot-ray: plan | prepare | run | status | report | submit | slurm. Argument parsing only: each command's flags
are parsed here, the sweep is resolved once (`sweep.resolve`) and handed to its command's core
(`aot_ray.sweep.commands`, `aot_ray.cluster`). Bad input ends with one line on stderr and exit code 2, never a
traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .cluster import slurm_job
from .cluster import submit as cluster_submit
from .sweep import (ReportOptions, RunOptions, by_name, plan_command, prepare_command, report_command, resolve,
                    run_command, status_command)
from .sweep.commands import guarded
from .sweep.options import count, parent_flag, parse_run, run_flags, set_flags, storage_flag, tracking_flag


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """`aot-ray`'s parser and each command's (the docs' CLI reference prints them)."""
    ap = argparse.ArgumentParser(prog="aot-ray", description="Arrow-of-Time sweeps on Ray Tune, tracked in MLflow.")
    sub = ap.add_subparsers(dest="command", required=True)
    commands = {}
    for add in (_plan_parser, _prepare_parser, _run_parser, _submit_parser, _slurm_parser, _status_parser,
                _report_parser):
        p = add(sub)
        commands[p.prog.split()[-1]] = p
    return ap, commands


def _parser() -> argparse.ArgumentParser:
    return parsers()[0]


def _plan_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="show the expanded trials, what is done, and what they cost; runs nothing")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--json", action="store_true", help="print a JSON list of trials")
    tracking_flag(p)
    storage_flag(p)
    set_flags(p)
    return p


def _prepare_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("prepare", help="prepare every distinct dataset of the sweep once (reuses what exists)")
    p.add_argument("sweep", help="sweep YAML")
    storage_flag(p, "where prepared data goes (default: the sweep's run.storage, else ./aot_results)")
    set_flags(p)
    return p


def _run_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the sweep through Ray Tune and print the AoT table")
    p.add_argument("sweep", help="sweep YAML")
    run_flags(p)
    return p


def _submit_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("submit", help="run a sweep on a Ray cluster made with `ray up CLUSTER.yaml`, detached")
    p.add_argument("cluster", help="cluster YAML (cluster/aws.yaml, gcp.yaml, onprem.yaml)")
    p.add_argument("sweep", help="sweep YAML, inside this project")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="options for `aot-ray run` on the head, after --")
    return p


def _slurm_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("slurm", help="check a sweep, then queue it as a Slurm job (cluster/slurm.sbatch): Ray on the "
                                     "job's nodes, requeued at its time limit until the sweep is done")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--nodes", type=count(1), default=1, help="nodes of the job (default 1)")
    p.add_argument("--gpus-per-node", type=count(0), default=0, help="GPUs per node (default 0)")
    p.add_argument("--cpus-per-task", type=count(1), help="CPUs per node for Ray (default: Slurm's, usually 1)")
    p.add_argument("--time", dest="time_limit", help="time limit of each job, e.g. 24:00:00 (it requeues itself)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--sbatch", dest="sbatch_args", action="append", default=[], metavar="ARG",
                   help="another sbatch option, e.g. --sbatch=--qos=long (repeatable)")
    # options for `aot-ray run` in the job go after `--` (split off in main: a REMAINDER positional here would
    # also swallow this command's own options written after the sweep)
    p.set_defaults(run_args=[])
    return p


def _status_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("status", help="list the sweep's trials with state, step, last validation loss and error")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    tracking_flag(p)
    storage_flag(p)
    parent_flag(p)
    set_flags(p)
    return p


def _report_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="the AoT report from MLflow: pairs with intervals, seed means, trends, "
                                      "sign tests, plots, report.md (also attached to the sweep's parent run)")
    p.add_argument("sweep", help="sweep YAML, or a sweep name")
    tracking_flag(p)
    storage_flag(p)
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
    parent_flag(p)
    set_flags(p)
    return p


def _resolved(args: argparse.Namespace):
    """The command's sweep, resolved once from its YAML and the flags that place it."""
    return resolve(args.sweep, sets=args.sets, tracking_uri=getattr(args, "tracking_uri", None),
                   storage=getattr(args, "storage", None), parent=getattr(args, "parent", None))


def _report(args: argparse.Namespace) -> int:
    path = Path(args.sweep)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        sweep = _resolved(args)
    else:  # a sweep by name: read from MLflow without its YAML
        sweep = by_name(args.sweep, tracking_uri=args.tracking_uri, storage=args.storage, parent=args.parent)
    opts = ReportOptions(out=args.out, as_json=args.json, watch_s=args.watch, conf=args.conf, alpha=args.alpha,
                         overfit_rise=args.overfit_rise, max_epochs=args.max_epochs, with_plots=not args.no_plots,
                         reference=args.reference)
    return report_command(sweep, opts)


def _slurm(args: argparse.Namespace) -> int:
    run_args = parse_run(args.sweep, args.run_args)  # a bad option fails here, before anything is queued
    sweep = resolve(args.sweep, sets=run_args.sets, tracking_uri=run_args.tracking_uri, storage=run_args.storage)
    job = slurm_job.submit(sweep, args.run_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                           cpus_per_task=args.cpus_per_task, time_limit=args.time_limit, partition=args.partition,
                           account=args.account, sbatch_args=args.sbatch_args)
    print(f"queued Slurm job {job}: watch with `squeue -j {job}` and `tail -f aot-ray-aot-ray-{job}.out`; stop "
          f"gracefully with `scancel --batch --signal=INT {job}` (neither that nor `scancel {job}` requeues; "
          f"`aot-ray slurm` again resumes the sweep)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    rest = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    run_args = parse_run(args.sweep, rest)  # a bad sweep or option fails here, before anything reaches the cluster
    cluster_submit.submit(args.cluster, resolve(args.sweep, sets=run_args.sets), rest)
    return 0


COMMANDS = {
    "plan": lambda a: plan_command(_resolved(a), a.json),
    "prepare": lambda a: prepare_command(_resolved(a)),
    "run": lambda a: run_command(_resolved(a), RunOptions.of(a)),
    "status": lambda a: status_command(_resolved(a), a.json),
    "report": _report,
    "submit": _submit,
    "slurm": _slurm,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = None
    if argv[:1] == ["slurm"] and "--" in argv:  # `aot-ray slurm SWEEP [options] -- [aot-ray run options]`
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    if rest is not None:
        args.run_args = rest
    return guarded(lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
