"""What the driver and its trials tell each other outside MLflow (which may be the very thing that is down).

- Trials to the driver, in their Tune reports: a note for the driver's output (`NOTE`: a checkpoint skipped on
  resume), and the step a trial checkpointed at when it stopped because it was asked to (`STOPPED_AT`). The Tune
  callback `TrialNotes` prints the first and counts the second: a dict lookup per result.
- The driver to its trials: the stop notice, a file in the Tune experiment's folder in storage (every node that
  runs a trial reaches it; no Ray, no tracking store needed), and a drain notice per draining node (`drains`).
  A trainer looks for them after every step, touching storage at most every few seconds (`notice_check`); once
  one is there, it checkpoints at that step, reports it with the reason and waits to be stopped (or, on a
  draining node, paused and started again elsewhere).

`GracefulStop` is how a driver that lost its lease (its tracking store gone for too long) ends its sweep before
the lease expires: post the notice, wait for the running trials' checkpoints, stop Tune, and if Tune has not
ended by the lease's deadline, exit at once, so that no second driver ever runs beside its trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

from .. import storage
from ..train.tracker_api import NOTE, NOTICE_MOVE, NOTICE_STOP, STOP_WHY, STOPPED_AT
from .interrupt import stop_tune

STOP_FILE = ".aot-stop"
TUNE_STOP_S = 8.0  # of the time left before the lease's deadline, what Tune's own stop is given
LOST_EXIT = 2  # the exit code of a driver that had to end at once (an AotError's)


def stop_path(experiment_path: str) -> str:
    return storage.join(experiment_path, STOP_FILE)


def notice_check(paths: str | dict[str, int], every_s: float | None = None) -> Callable[[], int]:
    """The trainer's look for the driver's notices: `paths` maps each notice file to what it asks (a single path:
    the sweep's stop notice, NOTICE_STOP); a stat of each at most every `every_s` seconds (2 on a disk, 10 on a
    bucket), never an error (a storage hiccup is "not yet"). Answers the largest code posted, else 0."""
    wanted = {paths: NOTICE_STOP} if isinstance(paths, str) else dict(paths)
    every = every_s if every_s is not None else (10.0 if any(map(storage.is_remote, wanted)) else 2.0)
    state = {"at": -every, "posted": 0}

    def posted() -> int:
        now = time.monotonic()
        if now - state["at"] >= every and state["posted"] < max(wanted.values(), default=0):
            state["at"] = now
            for path, code in wanted.items():
                if code > state["posted"]:
                    with contextlib.suppress(Exception):
                        state["posted"] = code if storage.exists(path) else state["posted"]
        return state["posted"]

    return posted


def wait_to_be_stopped() -> None:
    """A trial that stopped on its driver's notice (checkpointed and reported) waits for Tune's stop: were it to
    end or fail instead, Tune would count it finished, or start it again."""
    threading.Event().wait()


class StopNotice:
    """The stop notice of one Tune experiment, and what its trials answered."""

    def __init__(self, experiment_path: str) -> None:
        self.path = stop_path(experiment_path)
        self._cond = threading.Condition()
        self.running: set[str] = set()
        self.acks: dict[str, int] = {}  # trial id -> the step it checkpointed at

    def clear(self) -> None:
        """Remove a notice an earlier driver left (its trials are gone; this driver's must not stop)."""
        storage.remove_tree(self.path)

    def post(self, why: str) -> None:
        storage.write_text(self.path, json.dumps({"why": why, "at": time.time(), "pid": os.getpid()}))

    def started(self, trial_id: str) -> None:
        with self._cond:
            self.running.add(trial_id)
            self.acks.pop(trial_id, None)  # a trial that moved off a draining node runs again: a stop waits for it

    def ended(self, trial_id: str) -> None:
        with self._cond:
            self.running.discard(trial_id)
            self._cond.notify_all()

    def ack(self, trial_id: str, step: int) -> None:
        with self._cond:
            self.acks[trial_id] = step
            self._cond.notify_all()

    def wait(self, until: float) -> tuple[dict[str, int], set[str]]:
        """Wait (to the monotonic `until`) for every running trial to checkpoint; (acks, those still running
        without one)."""
        with self._cond:
            while self.running - set(self.acks) and time.monotonic() < until:
                self._cond.wait(min(1.0, max(0.0, until - time.monotonic())))
            return dict(self.acks), self.running - set(self.acks)


def trial_notes(say: Callable[[str], None] = print, notice: StopNotice | None = None) -> Any:
    """The Tune callback of this module: prints trials' notes, tells `notice` which trials run and which
    checkpointed on its request."""
    from ray.tune import Callback

    class TrialNotes(Callback):  # no closure: Tune pickles the class with its state (dropped below)
        def __init__(self, say: Callable[[str], None], notice: StopNotice | None) -> None:
            self.say, self.notice = say, notice

        def __getstate__(self) -> dict:  # Tune saves its callbacks; the printer and the notice are this driver's
            return {}

        def __setstate__(self, state: dict) -> None:
            self.say, self.notice = print, None

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.notice is not None:
                self.notice.started(trial.config.get("trial_id", str(trial)))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.notice is not None:
                self.notice.ended(trial.config.get("trial_id", str(trial)))

        on_trial_error = on_trial_complete

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            tid = trial.config.get("trial_id", str(trial))
            if result.get(NOTE):
                self.say(f"trial {tid}: {result[NOTE]}")
            if result.get(STOPPED_AT) is None:
                return
            if result.get(STOP_WHY) == NOTICE_MOVE:
                self.say(f"trial {tid}: checkpointed at step {int(result[STOPPED_AT])}, its node is draining; it "
                         f"goes on from there on another node")
            if self.notice is not None:
                self.notice.ack(tid, int(result[STOPPED_AT]))

    return TrialNotes(say, notice)


class GracefulStop:
    """A driver's stop of its own sweep before a deadline (its lease's), from another thread (the lease's)."""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.say = say
        self.notice: StopNotice | None = None  # while the grid's trials run
        self._tune_ended = threading.Event()
        self._tune_ended.set()

    @contextlib.contextmanager
    def tune(self, notice: StopNotice | None = None) -> Iterator[None]:
        """Around a Tune run (the grid, with its notice; the learning-rate search, without)."""
        self.notice = notice
        self._tune_ended.clear()
        try:
            yield
        finally:
            self._tune_ended.set()
            self.notice = None

    def _checkpoint(self, why: str, until: float, what: str) -> None:
        """Post the notice and wait (to the monotonic `until`) for the running trials' checkpoints; one line says
        `what` is happening and what was kept."""
        notice = self.notice
        if notice is None:
            self.say(f"aot-ray: {why}: {what}")
            return
        try:
            notice.post(why)
        except Exception as e:  # storage unreachable too: Tune's stop alone, from the last checkpoints
            self.say(f"aot-ray: the stop notice could not be written ({str(e).splitlines()[0][:200]})")
        acks, missing = notice.wait(until)
        done = ", ".join(f"{t} at step {s}" for t, s in sorted(acks.items()))
        self.say(f"aot-ray: {why}: {what}; {len(acks)} of {len(acks) + len(missing)} running trial(s) checkpointed"
                 + (f" ({done})" if done else "")
                 + (f"; the others resume from their last checkpoint: {', '.join(sorted(missing))}" if missing else ""))

    def signalled(self, signum: int, grace_s: float) -> None:
        """The first Ctrl-C or SIGTERM while trials run (from the signal handler: it returns at once): a thread
        posts the notice, gives the running trials `grace_s` (run.stop_grace_s) to checkpoint at the step they
        reached, and then stops Tune, so that the resume trains no step twice."""
        why = {int(signal.SIGINT): "interrupted", int(signal.SIGTERM): "terminated (SIGTERM)"}.get(
            int(signum), f"signal {signum}")

        def run() -> None:
            self._checkpoint(why, time.monotonic() + grace_s, "stopping the sweep at each trial's current step")
            stop_tune()

        threading.Thread(target=run, name="aot-graceful-stop", daemon=True).start()

    def stop(self, why: str, deadline: float) -> None:
        """Post the notice, give the running trials until shortly before `deadline` (monotonic) to checkpoint,
        stop Tune, and exit the process at `deadline` if Tune has not ended by then. One line says what was kept."""
        self._checkpoint(why, deadline - TUNE_STOP_S, "stopping the sweep before its lease expires")
        if not stop_tune():
            return
        if not self._tune_ended.wait(max(0.0, deadline - time.monotonic())):
            self.say(f"aot-ray: error: Tune did not stop within the lease ({why}); exiting at once, so that no "
                     f"second driver runs beside this one's trials: run the same command to resume")
            os._exit(LOST_EXIT)
