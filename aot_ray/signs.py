"""Live sign checking, in one place: the sequential sign test over seeds, per cell, on a sweep's MLflow runs; its
state logged as `aot_sign*` metrics on every trial run of the cell; and the stop requests of `run.stop_on_sign`.

The unit that replicates an arrow is the seed: a cell's sign is decided from the spread of its pairs' deltas
(`stats.seed_sign_sequence`), never from one pair's validation windows. A look is an evaluation step at or after
`after` x train.steps (the gap moves early in training, so alpha is not spent there); alpha is split evenly over
the looks the cell will have (its evaluations from there to the end of training, known in advance); at each look
the test uses every pair of the cell with both directions evaluated at that step. While a sweep runs, a step is a
look only once every pair of the cell planned to reach it has (`waiting`): deciding on the seeds that happen to
report first would spend a look on fewer seeds than the report later finds there. `run.stop_on_sign` stops a cell (all of its
pairs together, tag `aot.stop_at`) once the test has held one sign at `looks` consecutive looks.

Used while a sweep runs (`sign_callback`: a Tune callback that hands each refresh to a thread of the driver, so
Tune's event loop never waits on MLflow) and by the report (`aggregate.write`). Both read through
`aggregate.read.Reader`, which the caller makes: this module needs only its `curve`, `client`, `records` and
`runs`.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from typing import Any, Callable

from . import stats
from .spec.schema import SignStopSpec, TrialSpec
from .tracking import STOP_AT

# aot_sign_step: the look's step as a value, so one search tells how far each run's looks are logged
SIGN_METRICS = ("aot_sign", "aot_sign_delta", "aot_sign_lo", "aot_sign_hi", "aot_sign_seeds", "aot_sign_step")
# how far before the last refresh the searches for what changed reach back: for trainers' clocks behind the driver's
# (NTP keeps a cluster's within milliseconds); what a worse clock hides until its run's next evaluation or end, the
# sweep's last refresh (`refresh(full=True)`, one search of every run) still sees
MARGIN_S = 5.0
DEFAULT = SignStopSpec()  # alpha and the start of the looks when the sweep does not stop on sign

Curves = dict[str, "tuple[str, dict[int, float], dict[int, float]]"]  # pair_key -> (cell_key, fw, bw val loss)


def cells_of(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict]]]:
    """cell_key -> pair_key -> direction -> record, for pairs with both directions."""
    sides: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        sides[r["pair_key"]][r["direction"]] = r
    cells: dict[str, dict[str, dict[str, dict]]] = defaultdict(dict)
    for key, s in sides.items():
        if set(s) == {"forward", "backward"}:
            cells[s["forward"]["cell_key"]][key] = s
    return dict(cells)


def plan_looks(cells: dict[str, dict[str, dict[str, dict]]], after: float) -> tuple[dict[str, float], dict[str, int]]:
    """(cell_key -> the first step that counts as a look, `after` x train.steps; cell_key -> how many looks
    there will be: the evaluations from that step to the end of training, known before any is seen)."""
    first, planned = {}, {}
    for cell, pairs in cells.items():
        runs = [r for s in pairs.values() for r in s.values()]
        steps = max((r.get("steps") or 0 for r in runs), default=0)
        every = min((r.get("eval_every") or 0 for r in runs), default=0)
        first[cell] = after * steps
        if steps and every:
            evals = set(range(every, steps + 1, every)) | {steps}
            planned[cell] = sum(s >= first[cell] for s in evals)
    return first, planned


def sequences(curves: Curves, *, alpha: float = DEFAULT.alpha, start: dict[str, float] | None = None,
              planned: dict[str, int] | None = None, waiting: dict[str, set[str]] | None = None
              ) -> dict[str, list[stats.SignState]]:
    """cell_key -> the sequential test over its looks (pure); alpha is spent over `planned[cell]` looks where
    known, else as 6 alpha / (pi^2 k^2). With `waiting` (cell_key -> the pairs still expected to evaluate), a
    step counts only once each of those pairs has both directions there."""
    from .stats import delta

    by_cell: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, (cell, fw, bw) in sorted(curves.items()):
        first = (start or {}).get(cell, 0)
        for step, l_fw in fw.items():
            l_bw = bw.get(step)
            if step >= first and l_bw is not None and l_fw == l_fw and l_bw == l_bw:
                by_cell[cell][step].append(float(delta(l_fw, l_bw)))

    def reached(cell: str, step: int) -> bool:
        return all(p in curves and step in curves[p][1] and step in curves[p][2] for p in (waiting or {}).get(cell, ()))

    return {cell: stats.seed_sign_sequence(sorted((st, d) for st, d in steps.items() if reached(cell, st)), alpha,
                                           (planned or {}).get(cell))
            for cell, steps in sorted(by_cell.items())}


def waiting_pairs(cells: dict[str, dict[str, dict[str, dict]]], expected: dict[str, set[str]]
                  ) -> dict[str, set[str]]:
    """cell_key -> the planned pairs of the cell that are still to report: not both directions finished (a pair
    not started yet, or failed, counts as to report, so the cell waits for it)."""
    out = {}
    for cell, pairs in expected.items():
        have = cells.get(cell, {})
        out[cell] = {p for p in pairs if not (p in have and all(r["finished"] for r in have[p].values()))}
    return out


def stop_step(states: list[stats.SignState], *, looks: int) -> int | None:
    """The first look where the same sign has been established at `looks` consecutive looks (ending there)."""
    for i in range(looks - 1, len(states)):
        run = states[i - looks + 1 : i + 1]
        if states[i].sign and all(s.sign == states[i].sign for s in run):
            return states[i].step
    return None


def word(states: list[stats.SignState]) -> str:
    """The latest look of a cell, in words."""
    if not states:
        return "no look yet"
    last = states[-1]
    if last.n < 2:
        return "undetermined (1 seed)"
    if not last.sign:
        return "undetermined"
    w = "forward easier" if last.sign > 0 else "backward easier"
    flipped = any(s.sign and s.sign != last.sign for s in states)
    return w + (" (the other sign held earlier in training)" if flipped else "")


def read_curves(reader: Any, cells: dict[str, dict[str, dict[str, dict]]]) -> Curves:
    """Both directions' validation curves of every pair, read on the reader's threads."""
    from concurrent.futures import ThreadPoolExecutor

    items = [(cell, pair, s) for cell, pairs in cells.items() for pair, s in pairs.items()]
    with ThreadPoolExecutor(max(1, getattr(reader, "threads", 1)), thread_name_prefix="aot-curves") as pool:
        got = list(pool.map(lambda x: (dict(reader.curve(x[2]["forward"])), dict(reader.curve(x[2]["backward"]))),
                            items))
    return {pair: (cell, fw, bw) for (cell, pair, _), (fw, bw) in zip(items, got)}


def evaluate(reader: Any, records: list[dict[str, Any]], alpha: float = DEFAULT.alpha, after: float = DEFAULT.after,
             expected: dict[str, set[str]] | None = None
             ) -> tuple[dict[str, list[stats.SignState]], dict[str, dict[str, dict[str, dict]]]]:
    """(cell_key -> states, cell_key -> pairs) for the records (running trials included); with `expected`
    (cell_key -> its planned pair keys) a step is a look only once every unfinished planned pair reached it."""
    cells = cells_of(records)
    first, planned = plan_looks(cells, after)
    waiting = waiting_pairs(cells, expected) if expected is not None else None
    return sequences(read_curves(reader, cells), alpha=alpha, start=first, planned=planned, waiting=waiting), cells


def update(reader: Any, stop: SignStopSpec | None = None, alpha: float | None = None,
           expected: dict[str, set[str]] | None = None) -> int:
    """One refresh from scratch (`Watcher` keeps its state between refreshes). Returns how many new looks were
    logged (counted per run)."""
    return Watcher(reader, stop, alpha, expected).refresh()


def _mark(rec: dict[str, Any]) -> tuple:
    """What changes when a run has a new evaluation (`eval_step`; on runs of older versions the latest val_loss)."""
    return rec.get("eval_step"), rec.get("val_loss"), rec.get("status")


class Watcher:
    """The live sign test of one sweep, at the cost of what changed: each refresh is one search of the sweep's
    runs (their latest metrics), then the validation history of only the runs with a new evaluation, the test
    on every cell (pure, from curves kept here), and writes of only the new looks and stop requests. Which looks
    a run already carries is read once per run, and only from runs an earlier driver logged them on. I/O per
    refresh runs on `threads` threads (the MLflow server answers concurrent requests)."""

    def __init__(self, reader: Any, stop: SignStopSpec | None = None, alpha: float | None = None,
                 expected: dict[str, set[str]] | None = None, threads: int = 4) -> None:
        self.reader, self.stop, self.expected = reader, stop, expected
        self.rule = stop or DEFAULT
        self.alpha = alpha or self.rule.alpha
        self.threads = threads
        self.curves: dict[str, dict[int, float]] = {}  # run_id -> step -> val_loss
        self.marks: dict[str, tuple] = {}  # run_id -> _mark when its curve was read
        self.logged: dict[str, set[int]] = {}  # run_id -> steps of aot_sign on the run (above `floor`)
        self.floor: dict[str, int] = {}  # run_id -> every look up to this step is on the run
        self.last = {"runs": 0, "read": 0, "looks": 0, "failed": 0}  # the last refresh, in counts
        self.failed = 0
        self.since: float | None = None  # epoch s of the last refresh's start (None: none yet)
        self.margin_s = MARGIN_S
        self.known: dict[str, dict[str, Any]] = {}  # trial_id -> the record of its newest run, as last read

    def _each(self, fn: Any, items: list) -> list:
        """fn over items on the threads; an item whose call fails gives None (and `self.failed` counts it): a read
        that times out costs that run this refresh, not the refresh."""
        def safe(x: Any) -> Any:
            try:
                return fn(x)
            except Exception:
                self.failed += 1
                return None

        if len(items) <= 1 or self.threads <= 1:
            return [safe(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(self.threads, len(items)), thread_name_prefix="aot-signs") as pool:
            return list(pool.map(safe, items))

    def _records(self, full: bool = False) -> list[dict[str, Any]]:
        """The sweep's records, at the cost of what changed: after the first refresh (one search of every run),
        two filtered searches return only the runs evaluated since the last refresh (the trainers' `eval_time`, a
        cursor) and those that ended since (any status); every other run's record is the one kept from before.
        Both searches reach back `MARGIN_S` before the last refresh, for clocks of the trainers, the server and
        this driver that disagree; a run found again costs no history read unless its eval_step moved."""
        started = time.time()
        if full or self.since is None or getattr(self.reader, "runs", None) is None:
            runs = None
            self.known = {}
        else:
            runs = self._search_changed()
            for r in runs:  # a run that failed or was killed since: its trial has no record now
                held = self.known.get(r.data.tags.get("trial_id"))
                if r.info.status not in ("RUNNING", "FINISHED") and held is not None and held["run_id"] == r.info.run_id:
                    del self.known[r.data.tags.get("trial_id")]
        for rec in self.reader.records(include_running=True, runs=runs):
            held = self.known.get(rec["trial_id"])
            if held is None or (rec.get("started_ms") or 0) >= (held.get("started_ms") or 0):  # the newest run
                self.known[rec["trial_id"]] = rec
        self.since = started
        return list(self.known.values())

    def _search_changed(self) -> list:
        """The runs evaluated or ended since `margin_s` before the last refresh, newest first."""
        back = self.since - self.margin_s
        runs = {r.info.run_id: r for r in (*self.reader.runs.trials(evaluated_after_s=back),
                                           *self.reader.runs.trials(ended_after_ms=int(back * 1000)))}
        return sorted(runs.values(), key=lambda r: r.info.start_time or 0, reverse=True)

    def refresh(self, full: bool = False) -> int:
        """One look at the sweep: what changed since the last refresh (every run when `full`, and the first time).
        Returns how many new looks were logged (counted per run)."""
        self.failed = 0
        records = self._records(full)
        changed = [r for r in records if self.marks.get(r["run_id"]) != _mark(r)]
        for r, curve in zip(changed, self._each(lambda r: dict(self.reader.curve(r)), changed)):
            if curve is not None:  # else read again next time
                self.curves[r["run_id"]], self.marks[r["run_id"]] = curve, _mark(r)
        self.know_logged(records)
        cells = cells_of(records)
        first, planned = plan_looks(cells, self.rule.after)
        waiting = waiting_pairs(cells, self.expected) if self.expected is not None else None
        curves = {pair: (cell, self.curves[s["forward"]["run_id"]], self.curves[s["backward"]["run_id"]])
                  for cell, pairs in cells.items() for pair, s in pairs.items()
                  if s["forward"]["run_id"] in self.curves and s["backward"]["run_id"] in self.curves}
        seqs = sequences(curves, alpha=self.alpha, start=first, planned=planned, waiting=waiting)
        n = self._log(seqs, cells)
        if self.stop is not None:
            request_stops(self.reader, seqs, cells, self.stop)
        self.last = {"runs": len(records), "read": len(changed), "looks": n, "failed": self.failed}
        if self.failed:
            warnings.warn(f"sign test: {self.failed} MLflow reads or writes failed; those runs are read again at the "
                          f"next refresh")
        return n

    def know_logged(self, records: list[dict[str, Any]]) -> None:
        """Which looks the runs not seen before carry: from the search (`aot_sign_step`), read from the run's
        history only for runs an older version logged looks on."""
        new = [r for r in records if r["run_id"] not in self.logged]
        for r in new:
            if r.get("signed_to") is not None:
                self.floor[r["run_id"]] = r["signed_to"]
        old = [r for r in new if r.get("signed", True) and r.get("signed_to") is None]
        steps = self._each(lambda r: {m.step for m in self.reader.client.get_metric_history(r["run_id"], "aot_sign")},
                           old)
        older = {r["run_id"] for r in old}
        self.logged.update({r["run_id"]: set() for r in new if r["run_id"] not in older})
        self.logged.update((r["run_id"], st) for r, st in zip(old, steps) if st is not None)  # else: next time

    def _log(self, seqs: dict[str, list[stats.SignState]], cells: dict[str, dict[str, dict[str, dict]]]) -> int:
        """Each cell's new looks on all of its trial runs, one batch per run."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batches = []
        for cell, states in seqs.items():
            for s in cells[cell].values():
                for side in s.values():
                    run = side["run_id"]
                    if run not in self.logged:  # what it carries could not be read: nothing is written to it yet
                        continue
                    have, floor = self.logged[run], self.floor.get(run, -1)
                    fresh = [st for st in states if st.step > floor and st.step not in have]
                    if fresh:
                        batches.append((run, fresh, [
                            Metric(name, float(v), now, st.step) for st in fresh
                            for name, v in zip(SIGN_METRICS, (st.sign, st.delta, st.lo, st.hi, st.n, st.step))]))

        def write(batch: tuple) -> int:
            run_id, fresh, metrics = batch
            per = 1000 - 1000 % len(SIGN_METRICS)  # MLflow's limit per batch, in whole looks, in step order
            for i in range(0, len(metrics), per):
                self.reader.client.log_batch(run_id, metrics=metrics[i:i + per])
            self.logged[run_id].update(st.step for st in fresh)
            return len(fresh)

        return sum(n for n in self._each(write, batches) if n)


def request_stops(reader: Any, seqs: dict[str, list[stats.SignState]], cells: dict[str, dict[str, dict[str, dict]]],
                  stop: SignStopSpec) -> dict[str, int]:
    """Tag every run of each cell with a running trial whose sign is settled with that step (aot.stop_at): all
    its trainers stop at their next evaluation, and the report compares its pairs there. A cell tagged in part
    (an interrupted write) gets the same step on the rest. Returns cell_key -> step for the new requests."""
    out = {}
    for cell, states in seqs.items():
        runs = [r for s in cells[cell].values() for r in s.values()]
        have = [r["stop_at"] for r in runs if r.get("stop_at") is not None]
        if all(r["finished"] for r in runs) and not have:
            continue
        at = min(have) if have else stop_step(states, looks=stop.looks)
        if at is None or len(have) == len(runs):
            continue
        for r in runs:
            if r.get("stop_at") is None:
                reader.client.set_tag(r["run_id"], STOP_AT, str(at))
                r["stop_at"] = at
        out[cell] = at
    return out


def log_metrics(reader: Any, seqs: dict[str, list[stats.SignState]], cells: dict[str, dict[str, dict[str, dict]]]
                ) -> int:
    """Each cell's state at each look on all of its trial runs, as the report writes it (looks a run already
    carries are skipped). Returns how many looks were logged (counted per run)."""
    w = Watcher(reader)
    w.know_logged([side for pairs in cells.values() for s in pairs.values() for side in s.values()])
    return w._log(seqs, cells)


def expected_pairs(trials: list[TrialSpec]) -> dict[str, set[str]]:
    """cell_key -> its pair keys, for the live sign test to wait on."""
    out: dict[str, set[str]] = {}
    for t in trials:
        out.setdefault(t.cell_key, set()).add(t.pair_key)
    return out


def sign_callback(reader: Callable[[], Any], every_s: float = 30.0, stop: SignStopSpec | None = None,
                  expected: dict[str, set[str]] | None = None) -> Any:
    """A Tune callback that keeps the sequential sign test over seeds up to date (`Watcher`: metrics
    aot_sign* on the trial runs) while the sweep runs, and once more at the end; with `stop` (a SignStopSpec) it
    also asks settled cells to stop (their trainers see the request at their next evaluation). Each refresh runs
    on a thread of its own, never on Tune's event loop: the callback only starts one when the last has ended
    `every_s` seconds ago, and reports its failure (a warning: tracking hiccups must not stop the sweep).
    `expected` (cell_key -> the sweep's pair keys) makes each look wait for all of a cell's seeds. `reader`
    makes the reader of the sweep's runs (`aggregate.read.Reader`, bound to the sweep: picklable, as Tune saves
    its callbacks), on the refresh thread."""
    import warnings
    from concurrent.futures import Future, ThreadPoolExecutor

    from ray.tune import Callback

    class SignCallback(Callback):
        def __init__(self) -> None:
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
                    self.watcher = Watcher(reader(), stop, expected=expected)
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
            if self.running is None and t0 - self.ended >= every_s:
                self.running = self._submit()
            self.longest_s = max(self.longest_s, time.monotonic() - t0)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            # the sweep is over: the last refresh (after any in flight) is waited for, so the final looks and
            # the sign metrics of the finished runs are in MLflow before the report reads them; it searches every
            # run, whatever the clocks did
            if self.running is not None:
                self.running.exception()
            self.running = self._submit(full=True)
            self.running.exception()
            self._collect()
            if self.pool is not None:
                self.pool.shutdown(wait=True)
            if self.watcher is not None:
                self.watcher.reader.close()

    return SignCallback()
