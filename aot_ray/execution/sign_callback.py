"""The Tune callback that runs the live sign test (`signs.Watcher`) on a thread of the driver, never on Tune's
event loop. Imported only where Tune runs (it subclasses Tune's `Callback`): the report reads the same sign
test without Ray."""

from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from ray.tune import Callback

from ..signs import Watcher
from ..spec.schema import SignStopSpec


class SignCallback(Callback):
    """Keeps the sequential sign test over seeds up to date (`Watcher`: metrics aot_sign* on the trial runs)
    while the sweep runs, and once more at the end; with `stop` (a SignStopSpec) it also asks settled cells to
    stop (their trainers see the request at their next evaluation). Each refresh runs on a thread of its own,
    never on Tune's event loop: the callback only starts one when the last has ended `every_s` seconds ago, and
    reports its failure (a warning: tracking hiccups must not stop the sweep). `expected` (cell_key -> the
    sweep's pair keys) makes each look wait for all of a cell's seeds. `reader` makes the reader of the sweep's
    runs (`aggregate.read.Reader`, bound to the sweep: picklable, as Tune saves its callbacks), on the refresh
    thread."""

    def __init__(self, reader: Callable[[], Any], every_s: float = 30.0, stop: SignStopSpec | None = None,
                 expected: dict[str, set[str]] | None = None) -> None:
        self.reader, self.every_s, self.stop, self.expected = reader, every_s, stop, expected
        self.ended = 0.0  # when the last refresh ended (monotonic)
        self.watcher: Watcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.running: Future | None = None
        self.longest_s = 0.0  # the longest on_trial_result (the benchmark reads it)

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the experiment state
        return {**self.__dict__, "watcher": None, "pool": None, "running": None}

    def _submit(self, full: bool = False) -> Future:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="aot-sign-refresh")
        return self.pool.submit(self._refresh, full)

    def _refresh(self, full: bool) -> None:
        try:
            if self.watcher is None:
                self.watcher = Watcher(self.reader(), self.stop, expected=self.expected)
            self.watcher.refresh(full)
        finally:
            self.ended = time.monotonic()

    def _collect(self) -> None:
        if self.running is not None and self.running.done():
            e = self.running.exception()
            self.running = None
            if e is not None:
                warnings.warn(f"sign test not updated: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        t0 = time.monotonic()
        self._collect()
        if self.running is None and t0 - self.ended >= self.every_s:
            self.running = self._submit()
        self.longest_s = max(self.longest_s, time.monotonic() - t0)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # the sweep is over: the last refresh (after any in flight) is waited for, so the final looks and the sign
        # metrics of the finished runs are in MLflow before the report reads them; it searches every run, whatever
        # the clocks did
        if self.running is not None:
            self.running.exception()
        self.running = self._submit(full=True)
        self.running.exception()
        self._collect()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.watcher is not None:
            self.watcher.reader.close()
