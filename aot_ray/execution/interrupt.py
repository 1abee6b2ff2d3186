"""Ctrl-C and SIGTERM at every moment of a sweep, and a stop the driver asks of itself.

While Tune runs (`interruptible`), the first signal asks Tune to stop gracefully (SIGUSR1, which Tune answers by
saving its experiment state and returning); the driver then ends with `Interrupted`, which the CLI turns into exit
code 130 and a resume hint. A second signal raises at once and, should anything swallow that, the process exits
130 within `HARD_EXIT_S`; a third exits at once. Outside Tune (`terminable`), SIGTERM raises like Ctrl-C, so the
driver's clean-up (its own Ray, its lease) runs on both. `stop_tune` is the driver's own graceful stop (a lost
tracking store): the same path as a first signal."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterator

HARD_EXIT_S = 20.0
_tune_running = threading.Event()
_last_signal: list[int] = []  # the signals that stopped this process, in order


def last_signal() -> int | None:
    """The signal that stopped the command (SIGINT: a person's Ctrl-C or `scancel --signal=INT`; SIGTERM: a
    scheduler's time limit or preemption), None when none came."""
    return _last_signal[-1] if _last_signal else None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the sweep; Tune saved its state first. The CLI exits 130 with this message."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminable() -> Iterator[None]:
    """For a whole command: SIGTERM raises Interrupted in the main thread, as Ctrl-C raises KeyboardInterrupt."""
    if not _main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _last_signal.append(signum)
        raise Interrupted("terminated: run the same command again to resume")

    def on_int(signum: int, frame: Any) -> None:
        _last_signal.append(signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is signal.default_int_handler:  # SIGINT ignored from the start stays ignored
        signal.signal(signal.SIGINT, on_int)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


@contextlib.contextmanager
def keep_sigterm() -> Iterator[None]:
    """Around `ray.init` and `ray.shutdown`: init installs a SIGTERM handler of its own (`sys.exit(15)`), and
    shutdown leaves the process-level handler at the default, which would turn a SIGTERM between connecting and
    Tune's start (data preparation, say) or after Tune (the report) into exit 15 or death, with no graceful
    stop, no resume hint and, in a Slurm job, no requeue. This puts the handler back."""
    if not _main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def stop_tune() -> bool:
    """Ask a running Tune experiment of this process to stop gracefully; False when none runs."""
    if not _tune_running.is_set():
        return False
    os.kill(os.getpid(), signal.SIGUSR1)
    return True


@contextlib.contextmanager
def interruptible(on_signal: Callable[[int], None] | None = None) -> Iterator[Callable[[], bool]]:
    """While Tune runs: Ctrl-C or SIGTERM (what schedulers and `ray job stop` send) ask Tune to stop gracefully;
    a second signal stops at once. Yields a function that says whether a signal came. With `on_signal`, the first
    signal calls it (with the signal's number) instead of stopping Tune: it must return at once (it runs in the
    signal handler, on Tune's thread) and stop Tune itself (`stop_tune`) once its trials have checkpointed."""
    if not _main_thread():
        yield lambda: False
        return
    came = threading.Event()
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        _last_signal.append(signum)
        count[0] += 1
        if count[0] >= 3:
            os._exit(130)
        if count[0] == 2:
            # whatever catches the exception below (Tune's own clean-up, a retry loop), the process ends
            timer = threading.Timer(HARD_EXIT_S, os._exit, (130,))
            timer.daemon = True
            timer.start()
            raise Interrupted("interrupted again: stopped at once; run the same command to resume")
        came.set()
        if on_signal is not None:
            on_signal(signum)
        else:
            os.kill(os.getpid(), signal.SIGUSR1)

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours instead: it also covers SIGTERM, and tells us
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    # until Tune puts its own SIGUSR1 handler in place, a stop request must not end the process (the default)
    signal.signal(signal.SIGUSR1, lambda signum, frame: came.set())
    _tune_running.set()
    try:
        yield came.is_set
    finally:
        _tune_running.clear()
        for sig, h in old.items():
            signal.signal(sig, h)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
