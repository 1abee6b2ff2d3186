"""The live sign test at the cost of what changed (`Watcher`): each refresh searches only the runs evaluated or
ended since the last, reads only their new histories, runs the test on every cell and writes only the new looks
(`aot_sign*` metrics) and stop requests (tag `aot.stop_at`)."""

from __future__ import annotations

import time
import warnings
from typing import Any

from .. import stats
from ..spec.schema import SignStopSpec
from ..tracking import STOP_AT
from .cells import (DEFAULT, ORDER_SEP, SIGN_METRICS, cells_of, order_of, plan_looks, sequences, stop_step,
                    waiting_pairs)

# how far before the last refresh the searches for what changed reach back: for trainers' clocks behind the driver's
# (NTP keeps a cluster's within milliseconds); what a worse clock hides until its run's next evaluation or end, the
# sweep's last refresh (`refresh(full=True)`, one search of every run) still sees
MARGIN_S = 5.0

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
        curves = {pair: (cell, self.curves[s["forward"]["run_id"]], self.curves[s["other"]["run_id"]])
                  for cell, pairs in cells.items() for pair, s in pairs.items()
                  if s["forward"]["run_id"] in self.curves and s["other"]["run_id"] in self.curves}
        seqs = sequences(curves, alpha=self.alpha, start=first, planned=planned, waiting=waiting)
        n = self._log(seqs, cells)
        if self.stop is not None:
            request_stops(self.reader, seqs, cells, self.stop, self.expected)
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
            # a forward run carries its backward comparison's looks; another order's looks go on that order's run
            sides = ("forward", "other") if order_of(cell) == "backward" else ("other",)
            for s in cells[cell].values():
                for side in (s[k] for k in sides):
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
                  stop: SignStopSpec, expected: dict[str, set[str]] | None = None) -> dict[str, int]:
    """Tag every run of each cell with a running trial whose sign is settled with that step (aot.stop_at): all
    its trainers stop at their next evaluation, and the report compares its pairs there. A cell tagged in part
    (an interrupted write) gets the same step on the rest. One forward trial serves every order of its cell, so
    a cell with orders besides backward stops as a whole once each order's comparison (each planned one, with
    `expected`) is settled, at the latest of their steps. Returns cell_key -> step for the new requests."""
    groups: dict[str, list[str]] = {}
    for cell in sorted(set(cells) | set(expected or ())):
        groups.setdefault(cell.partition(ORDER_SEP)[0], []).append(cell)
    out = {}
    for members in groups.values():
        runs = list({r["run_id"]: r for c in members for s in cells.get(c, {}).values() for r in s.values()}.values())
        have = [r["stop_at"] for r in runs if r.get("stop_at") is not None]
        if not runs or (all(r["finished"] for r in runs) and not have):
            continue
        steps = [stop_step(seqs.get(c, []), looks=stop.looks) for c in members]
        at = min(have) if have else None if None in steps else max(steps)
        if at is None or len(have) == len(runs):
            continue
        for r in runs:
            if r.get("stop_at") is None:
                reader.client.set_tag(r["run_id"], STOP_AT, str(at))
                r["stop_at"] = at
        out.update((c, at) for c in members)
    return out


def log_metrics(reader: Any, seqs: dict[str, list[stats.SignState]], cells: dict[str, dict[str, dict[str, dict]]]
                ) -> int:
    """Each cell's state at each look on all of its trial runs, as the report writes it (looks a run already
    carries are skipped). Returns how many looks were logged (counted per run)."""
    w = Watcher(reader)
    w.know_logged([side for pairs in cells.values() for s in pairs.values() for side in s.values()])
    return w._log(seqs, cells)
