"""A trial trained under a tracker whose run is always closed: FINISHED when `train` returns, FAILED with the
error as a tag when it raises, KILLED (resumable, tagged interrupted) when it is stopped from outside. The one
helper the Ray adapters share (Tune trials, lr-search candidates, data-parallel workers); no Ray here."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch

from ..errors import StopRequested
from ..spec.schema import TrialSpec
from .loop import Report, TrainResult, train
from .tracker_api import Tracker


def set_threads(trial: TrialSpec) -> None:
    """torch's intra-op threads: train.threads, else the CPUs the trial was given."""
    torch.set_num_threads(trial.train.threads or max(1, int(trial.resources.cpu)))


def train_tracked(trial: TrialSpec, tracker: Tracker, checkpoint: str | Path | list[str | Path] | None, *,
                  data: str | Path, on_report: Report | None = None, interrupts_resume: bool = True,
                  closes_run: bool = True, stop_notice: Callable[[], int] | None = None) -> TrainResult:
    """`train`, then the run closed. `interrupts_resume`: KeyboardInterrupt / SystemExit close it KILLED (the
    sweep resumes it), not FAILED; so does StopRequested (the driver's stop notice), whatever `interrupts_resume`.
    `closes_run` False: a worker that only follows (a data-parallel rank > 0)."""
    set_threads(trial)
    try:
        result = train(trial, tracker, checkpoint, data=data, on_report=on_report, stop_notice=stop_notice)
    except BaseException as e:
        if closes_run and tracker.run_id is not None:
            with contextlib.suppress(Exception):  # the trial's own error is the one to report
                interrupted = isinstance(e, (KeyboardInterrupt, SystemExit)) and interrupts_resume
                if interrupted or isinstance(e, StopRequested):
                    tracker.finish("KILLED", patience_s=30)
                else:
                    tracker.finish("FAILED", error=f"{type(e).__name__}: {e}", patience_s=30)
        raise
    if closes_run:
        tracker.finish("FINISHED")
    return result
