"""One driver per sweep, whatever the tracking store does: a lease on the sweep's MLflow experiment, so a second
`aot-ray run` of the same sweep and store is refused (naming the first) instead of training the same trials twice.

The lease is an experiment tag (`aot.driver`: who, where, since when; `aot.driver_renewed`: the last renewal,
epoch seconds). It is taken before the sweep's parent run is opened, renewed by a thread every `RENEW_S`, and
released at exit. Every read and write of it is bounded (`IO_TIMEOUT_S`, whatever MLflow's own retries would do),
and a renewal first checks that the lease is still this driver's. A driver that cannot renew stops its sweep
itself: after `patience_s` without a renewal (at most TTL_S - STOP_GRACE_S - MARGIN_S) it calls `on_lost(why,
deadline)`, and by `deadline` (MARGIN_S before its last renewal expires) its trials have stopped. So a lease
that expired (TTL_S after its last renewal) belongs to a driver that no longer trains anything.

A second driver is refused while the first may still be alive: its lease is unexpired, or it ran on this
machine and its process (pid and start time) still exists, expired or not. A holder on this machine whose
process is gone has no lease. MLflow has no compare-and-set, so a taker writes, waits `SETTLE_S` and reads back:
of two drivers started together, the one whose write landed last holds the lease and the other is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import AotError, TrackingError
from .runs import SweepRuns
from .store import client, reason, sqlite_path, store_exists, store_writable

LEASE, RENEWED = "aot.driver", "aot.driver_renewed"
TTL_S = 90.0  # a lease not renewed for this long has expired
RENEW_S = 15.0  # how often the lease is renewed
RETRY_S = 3.0  # after a failed renewal, the next try
IO_TIMEOUT_S = 8.0  # one read or write of the lease, at most
STOP_GRACE_S = 20.0  # what a driver that gave up its store keeps to stop its trials (they checkpoint first)
MARGIN_S = 5.0  # its trials have stopped this long before its lease expires
MAX_PATIENCE_S = TTL_S - STOP_GRACE_S - MARGIN_S  # 65 s
SETTLE_S = 1.5
CHECK_S = 1.0  # how often the renewing thread looks at the store (a stat of a SQLite file: cheap)


class LeaseTaken(Exception):
    """Another driver holds the lease this driver thought it held."""


def bounded(fn: Callable[[], Any], timeout: float | None = None, what: str = "the tracking store") -> Any:
    """`fn()`, or TimeoutError once `timeout` (IO_TIMEOUT_S) passed: a store that hangs (a stopped server, a
    dropped connection, MLflow's own retries) never holds the lease's thread past its deadlines. The call left
    behind ends in its own time on a daemon thread."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name="aot-lease-io")
    t.start()
    t.join(IO_TIMEOUT_S if timeout is None else timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} did not answer within {IO_TIMEOUT_S if timeout is None else timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22); None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _here(info: dict) -> bool | None:
    """Whether the holder's process is alive (True) or gone (False), when it ran on this machine; None when that
    cannot be told here (another machine, or an older lease without the process's start time)."""
    if info.get("host") != socket.gethostname() or not info.get("pid"):
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    if info.get("start") is None or not Path("/proc/self/stat").exists():
        return None
    return _start_ticks(int(info["pid"])) == info["start"]


@dataclass(frozen=True)
class Holder:
    token: str
    who: str
    since: float
    renewed: float
    alive_here: bool = False  # it runs on this machine: held whatever its renewal says

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        text = (f"{self.who}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}, lease "
                f"renewed {now - self.renewed:.0f} s ago")
        if now - self.renewed > TTL_S:
            text += " (expired, but its process is still alive on this machine: stop it first)"
        return text


def _raw(uri: str, sweep: str) -> tuple[dict, float] | None:
    """The lease's tags as written (info, renewed), or None: no store, no experiment, no lease."""

    if not store_exists(uri):
        return None  # no store yet, so no lease (and reading would create the database)
    exp_id = SweepRuns(uri, sweep).experiment()
    if exp_id is None:
        return None
    tags = client(uri).get_experiment(exp_id).tags
    try:
        return json.loads(tags.get(LEASE, "")), float(tags.get(RENEWED, "0"))
    except ValueError:
        return None


def holder(uri: str, sweep: str, now: float | None = None, timeout: float | None = None) -> Holder | None:
    """The driver holding the sweep's lease, or None (no lease, released, expired, or its process gone)."""
    raw = bounded(lambda: _raw(uri, sweep), timeout)
    if raw is None:
        return None
    info, renewed = raw
    now = time.time() if now is None else now
    alive = _here(info)
    if not renewed or alive is False or (now - renewed > TTL_S and not alive):
        return None
    return Holder(info["token"], info["who"], float(info["since"]), renewed, alive_here=bool(alive))


def sqlite_identity(uri: str) -> tuple[int, int] | None:
    """(device, inode) of a SQLite store's file, None for other stores."""

    db = sqlite_path(uri)
    if db is None:
        return None
    try:
        st = db.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def sqlite_gone(uri: str, identity: tuple[int, int] | None) -> str | None:
    """Why a SQLite store can no longer take this driver's writes (its file deleted, replaced or made
    read-only), else None. Other stores show it by refusing writes."""

    db = sqlite_path(uri)
    if db is None or identity is None:
        return None
    now = sqlite_identity(uri)
    if now is None:
        return f"database file {db} was deleted"
    if now != identity:
        if not _holds_runs(db):  # SQLite opened a new, empty file for a write that came after the deletion
            return f"database file {db} was deleted (a write after that left an empty file in its place)"
        return f"database file {db} was replaced by another file"
    if not store_writable(uri):
        return f"database file {db} is no longer writable"
    return None


def _holds_runs(db: Path) -> bool:
    """Whether an SQLite file holds an MLflow store (its experiments table), read without creating anything."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2)) as con:
            return con.execute("SELECT 1 FROM sqlite_master WHERE name = 'experiments'").fetchone() is not None
    except sqlite3.Error:
        return False


class Lease:
    """`with Lease(uri, sweep) as lease:` refuses at once (AotError naming the holder) when another driver holds
    the sweep's lease, without writing anything; `lease.acquire()` inside the block takes it (just before the
    sweep's runs are opened), and leaving the block releases it. `on_lost(why, deadline)`: called once, from
    the renewing thread, when the lease cannot be kept; `deadline` (time.monotonic) is when the driver's trials
    must have stopped."""

    def __init__(self, uri: str, sweep: str, patience_s: float = 60.0,
                 on_lost: Callable[[str, float], Any] | None = None) -> None:
        self.uri, self.sweep = uri, sweep
        self.token = uuid.uuid4().hex
        self.who = f"aot-ray run on {socket.gethostname()} (pid {os.getpid()})"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.patience_s = min(patience_s, MAX_PATIENCE_S)
        self.on_lost = on_lost
        self.lost: str | None = None  # why the lease was given up, once it was
        self._since = time.time()
        self._at_start_s = max(IO_TIMEOUT_S, self.patience_s)  # one call's bound while nothing runs yet

    def _info(self) -> str:
        return json.dumps({"token": self.token, "who": self.who, "since": self._since, "host": socket.gethostname(),
                           "pid": os.getpid(), "start": _start_ticks(os.getpid())})

    def _write(self, with_info: bool, timeout: float | None = None) -> float:
        """Write the lease (`with_info`: who holds it too) stamped now; returns the stamp's time.monotonic."""

        c = client(self.uri)
        exp_id = bounded(lambda: SweepRuns(self.uri, self.sweep).experiment(create=True), timeout)
        stamp, at = time.time(), time.monotonic()
        if with_info:
            bounded(lambda: c.set_experiment_tag(exp_id, LEASE, self._info()), timeout)
        bounded(lambda: c.set_experiment_tag(exp_id, RENEWED, repr(stamp)), timeout)
        return at

    def _refuse(self, h: Holder) -> AotError:
        return AotError(f"sweep {self.sweep!r} is already being run by {h.describe()}; wait for it to end or stop "
                        f"it (a driver that died loses its lease {TTL_S:.0f} s after its last renewal)")

    def _unanswered(self) -> TrackingError:
        return TrackingError(f"the tracking store {self.uri} did not answer within {self._at_start_s:.0f} s, before "
                             f"anything started; check that it is up, or pass another --tracking-uri, then run the "
                             f"same command again")

    def check(self) -> None:
        """Refuse when another driver holds the lease (reads only: creates no experiment). Before anything
        started, a slow store (a server still warming up on a busy node) is waited for up to the patience."""
        try:
            h = holder(self.uri, self.sweep, timeout=self._at_start_s)
        except TimeoutError:
            raise self._unanswered() from None
        if h is not None and h.token != self.token:
            raise self._refuse(h)

    def acquire(self) -> None:
        self.check()
        try:
            stamped = self._write(with_info=True, timeout=self._at_start_s)
            time.sleep(SETTLE_S)  # another driver that read the same empty lease may have written after us
            h = holder(self.uri, self.sweep, timeout=self._at_start_s)
        except TimeoutError:
            raise self._unanswered() from None
        if h is None or h.token != self.token:
            if h is None:
                raise AotError(f"could not take the lease of sweep {self.sweep!r} in {self.uri}; try again")
            raise self._refuse(h)
        self._thread = threading.Thread(target=self._renew, args=(stamped,), daemon=True, name="aot-lease")
        self._thread.start()

    def _renew_once(self) -> float:
        """Renew, after checking the lease is still this driver's (LeaseTaken if not)."""
        raw = bounded(lambda: _raw(self.uri, self.sweep))
        if raw is not None and raw[0].get("token") not in (None, self.token):
            raise LeaseTaken(f"another driver took the sweep's lease ({raw[0].get('who', '?')})")
        return self._write(with_info=raw is None or raw[0].get("token") is None)

    def _renew(self, stamped: float) -> None:
        """The renewing thread: a renewal every RENEW_S (RETRY_S after a failure), and the store watch."""
        file = sqlite_identity(self.uri)
        next_try, error = stamped + RENEW_S, ""
        while not self._stop.wait(CHECK_S):
            now = time.monotonic()
            gone = sqlite_gone(self.uri, file)
            if gone is None and now >= next_try:
                try:
                    stamped, error = self._renew_once(), ""
                    next_try = stamped + RENEW_S
                except LeaseTaken as e:
                    gone = str(e)
                except Exception as e:  # an outage, a hang: tried again soon, well inside the lease
                    error = reason(e)
                    next_try = time.monotonic() + RETRY_S
            if gone is None and time.monotonic() - stamped > self.patience_s:
                gone = f"the lease could not be renewed for {time.monotonic() - stamped:.0f} s ({error})"
            if gone is not None:
                self.lost = gone
                if self.on_lost is not None:
                    self.on_lost(gone, stamped + TTL_S - MARGIN_S)
                return

    def release(self) -> None:
        if self._thread is None:  # never taken
            return
        self._stop.set()
        self._thread.join(timeout=IO_TIMEOUT_S + 5)
        if self.lost:
            return  # not ours to touch any more: it expires by itself
        try:
            raw = bounded(lambda: _raw(self.uri, self.sweep))
            if raw is not None and raw[0].get("token") == self.token:

                bounded(lambda: client(self.uri).set_experiment_tag(
                    SweepRuns(self.uri, self.sweep).experiment(), RENEWED, "0"))
        except Exception:  # an unreachable store: the lease expires by itself
            pass

    def __enter__(self) -> "Lease":
        self.check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
