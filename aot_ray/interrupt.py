"""Ctrl-C and SIGTERM while a sweep trains: Tune is asked to stop gracefully (it saves its experiment state), then
the driver ends with `Interrupted`, which the CLI turns into exit code 130 and a resume hint."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the sweep; Tune saved its state first. The CLI exits 130 with this message."""


@contextlib.contextmanager
def interruptible() -> Iterator[Callable[[], bool]]:
    """While Tune runs: Ctrl-C or SIGTERM (what schedulers and `ray job stop` send) ask Tune to stop gracefully
    (SIGUSR1, which Tune answers by saving its experiment state and returning); a second signal stops at once.
    Yields a function that says whether a signal came."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    came = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if came.is_set():
            raise Interrupted("interrupted again: stopped at once; run the same command to resume")
        came.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours instead: it also covers SIGTERM, and tells us
    for sig in old:
        signal.signal(sig, handler)
    try:
        yield came.is_set
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
