"""The command line's settings beside a sweep's YAML, in one place: the flags that say where a sweep's runs and
files are (`--tracking-uri`, `--storage`, `--set`, `--parent`), the flags of `aot-ray run` (`RunOptions`, met with
the YAML's `run:` section by `run_spec`), and their parser, which `aot-ray run`, the Slurm job and a cluster's
head share (`run_flags`, `parse_run`): a bad option is the same one-line error wherever it is given."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace

from ..errors import AotError
from ..spec import RunSpec, SignStopSpec

SET_HELP = ("override a YAML field before validation (repeatable): a dotted path, e.g. --set "
            "defaults.train.steps=100, --set data.local.paths='[\"corpora/{lang}.txt\"]'; under grid the rest is the "
            "axis name: --set grid.seed='[0,1]', --set grid.optim.lr='[1.0e-3,2.0e-3]'")


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
    verbose: int = 1  # 0 --quiet: a progress line every run.progress_every_s; 1: a live line on a terminal;
    # 2 --verbose: Tune's tables and the trainers' own output too

    def run_spec(self, run: RunSpec) -> RunSpec:
        if self.max_concurrent_trials is not None:
            run = replace(run, max_concurrent_trials=self.max_concurrent_trials)
        if self.stop_on_sign and run.stop_on_sign is None:
            run = replace(run, stop_on_sign=SignStopSpec())
        if self.shared_storage:
            run = replace(run, shared_storage=True)
        return run

    @classmethod
    def of(cls, args: argparse.Namespace) -> "RunOptions":
        """From the flags `run_flags` parsed (`--quiet` is verbose 0, `--verbose` 2)."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name) and f.name != "verbose"}
        return cls(**given, verbose=0 if args.quiet else 2 if getattr(args, "verbose", False) else 1)


def count(least: int):
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


def set_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def parent_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run to read (its id or a prefix of it; "
                                                      "default: the newest, i.e. the last --fresh start)")


def tracking_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the sweep's "
                                          "run.tracking_uri, else sqlite:///mlflow.db in this folder)")


def storage_flag(p: argparse.ArgumentParser, help: str = "results, checkpoints and prepared data (default: the "
                                                          "sweep's run.storage, else ./aot_results)") -> None:
    p.add_argument("--storage", help=help)


def run_flags(p: argparse.ArgumentParser) -> None:
    """Every option of `aot-ray run` after its sweep."""
    tracking_flag(p)
    storage_flag(p)
    set_flags(p)
    p.add_argument("--address", help="address of a running Ray cluster (default: start Ray locally)")
    p.add_argument("--num-cpus", type=count(1), help="CPUs for a local Ray (default: all)")
    p.add_argument("--num-gpus", type=count(0), help="GPUs for a local Ray (default: all)")
    p.add_argument("--max-concurrent-trials", type=count(1), help="override run.max_concurrent_trials")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true",
                      help="the progress line every run.progress_every_s only, never redrawn in place")
    talk.add_argument("--verbose", action="store_true",
                      help="also Ray Tune's trial tables and every trainer's own output")
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


class _Refusing(argparse.ArgumentParser):
    """A parser whose bad option is an AotError (one line, exit 2 from whichever entry called it), not a
    SystemExit from inside a Slurm job or a head's entry."""

    def error(self, message: str):
        raise AotError(f"aot-ray run options: {message}")


def parse_run(sweep: str, rest: list[str]) -> argparse.Namespace:
    """The `aot-ray run` options given after a sweep (a Slurm job's and a head's forwarded options)."""
    p = _Refusing(prog="aot-ray run", add_help=False)
    p.add_argument("sweep")
    run_flags(p)
    return p.parse_args([sweep, *rest])
