"""One driver per sweep: a lease on the sweep's MLflow experiment, so a second `aot-ray run` of the same sweep
and store is refused (naming the first) instead of training the same trials twice.

The lease is an experiment tag (`aot.driver`: who and since when; `aot.driver_renewed`: the last renewal). It is
taken before the sweep's parent run is opened, renewed by a thread every `RENEW_S`, and released at exit. A
driver that died (SIGKILL, a lost node) stops renewing: its lease expires `TTL_S` after the last renewal, or at
once when it ran on this machine and its process is gone. MLflow
has no compare-and-set, so a taker writes, waits `SETTLE_S` and reads back: of two drivers started together, the
one whose write landed last holds the lease and the other is refused.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import AotError

LEASE, RENEWED = "aot.driver", "aot.driver_renewed"
TTL_S = 90.0
RENEW_S = 20.0
SETTLE_S = 1.5
CHECK_S = 2.0  # how often the renewing thread looks at the store (a stat of a SQLite file: cheap)


@dataclass(frozen=True)
class Holder:
    token: str
    who: str
    since: float
    renewed: float

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return (f"{self.who}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}, lease "
                f"renewed {now - self.renewed:.0f} s ago")


def holder(uri: str, sweep: str, now: float | None = None) -> Holder | None:
    """The driver holding the sweep's lease, or None (no lease, released, or expired)."""
    from .store import client, store_exists
    from .runs import experiment_id

    if not store_exists(uri):
        return None  # no store yet, so no lease (and reading would create the database)
    exp_id = experiment_id(uri, sweep, create=False)
    if exp_id is None:
        return None
    tags = client(uri).get_experiment(exp_id).tags
    try:
        info = json.loads(tags.get(LEASE, ""))
        renewed = float(tags.get(RENEWED, "0"))
    except ValueError:
        return None
    now = time.time() if now is None else now
    if not renewed or now - renewed > TTL_S or _dead_here(info):
        return None
    return Holder(info["token"], info["who"], float(info["since"]), renewed)


def _dead_here(info: dict) -> bool:
    """The holder ran on this machine and its process no longer exists."""
    if info.get("host") != socket.gethostname() or not info.get("pid"):
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def sqlite_identity(uri: str) -> tuple[int, int] | None:
    """(device, inode) of a SQLite store's file, None for other stores."""
    from .store import sqlite_path

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
    from .store import sqlite_path, store_writable

    db = sqlite_path(uri)
    if db is None or identity is None:
        return None
    now = sqlite_identity(uri)
    if now is None:
        return f"database file {db} was deleted"
    if now != identity:
        return f"database file {db} was replaced by another file"
    if not store_writable(uri):
        return f"database file {db} is no longer writable"
    return None


class Lease:
    """`with Lease(uri, sweep) as lease:` refuses at once (AotError naming the holder) when another driver holds
    the sweep's lease, without writing anything; `lease.acquire()` inside the block takes it (just before the
    sweep's runs are opened), and leaving the block releases it."""

    def __init__(self, uri: str, sweep: str, patience_s: float = 60.0,
                 on_lost: Callable[[str], Any] | None = None) -> None:
        self.uri, self.sweep = uri, sweep
        self.token = uuid.uuid4().hex
        self.who = f"aot-ray run on {socket.gethostname()} (pid {os.getpid()})"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the store watch: a driver whose writes all fail for `patience_s` (or whose SQLite file is gone) stops
        # its sweep through `on_lost`, before its lease expires and another driver could take the sweep over
        self.patience_s = min(patience_s, TTL_S - RENEW_S)
        self.on_lost = on_lost
        self.lost: str | None = None  # why the store was given up, once it was

    def _write(self, since: float) -> None:
        from .runs import experiment_id
        from .store import client, retry

        c, exp_id = client(self.uri), experiment_id(self.uri, self.sweep, create=True)
        value = json.dumps({"token": self.token, "who": self.who, "since": since, "host": socket.gethostname(),
                            "pid": os.getpid()})
        retry(lambda: c.set_experiment_tag(exp_id, LEASE, value))
        retry(lambda: c.set_experiment_tag(exp_id, RENEWED, repr(time.time())))

    def _refuse(self, h: Holder) -> AotError:
        return AotError(f"sweep {self.sweep!r} is already being run by {h.describe()}; wait for it to end or stop "
                        f"it (a driver that died loses its lease {TTL_S:.0f} s after its last renewal)")

    def check(self) -> None:
        """Refuse when another driver holds the lease (reads only: creates no experiment)."""
        h = holder(self.uri, self.sweep)
        if h is not None and h.token != self.token:
            raise self._refuse(h)

    def acquire(self) -> None:
        h = holder(self.uri, self.sweep)
        if h is not None and h.token != self.token:
            raise self._refuse(h)
        self._write(time.time())
        time.sleep(SETTLE_S)  # another driver that read the same empty lease may have written after us
        h = holder(self.uri, self.sweep)
        if h is None or h.token != self.token:
            if h is None:
                raise AotError(f"could not take the lease of sweep {self.sweep!r} in {self.uri}; try again")
            raise self._refuse(h)
        self._thread = threading.Thread(target=self._renew, daemon=True, name="aot-lease")
        self._thread.start()

    def _renew(self) -> None:
        since = holder(self.uri, self.sweep)
        start = since.since if since else time.time()
        file = sqlite_identity(self.uri)
        last_ok = last_try = time.monotonic()
        error = ""
        while not self._stop.wait(CHECK_S):
            now = time.monotonic()
            gone = sqlite_gone(self.uri, file)
            if gone is None and now - last_try >= RENEW_S:
                last_try = now
                try:
                    self._write(start)
                    last_ok, error = time.monotonic(), ""
                except Exception as e:  # a tracking hiccup: the next renewal tries again, well inside the TTL
                    error = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if gone is None and now - last_ok > self.patience_s:
                gone = f"refused every write for {now - last_ok:.0f} s ({error})"
            if gone is not None:
                self.lost = gone
                if self.on_lost is not None:
                    self.on_lost(gone)
                return

    def release(self) -> None:
        from .runs import experiment_id
        from .store import client

        if self._thread is None:  # never taken
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            h = holder(self.uri, self.sweep)
            if h is not None and h.token == self.token:
                client(self.uri).set_experiment_tag(experiment_id(self.uri, self.sweep, create=False), RENEWED, "0")
        except Exception:  # an unreachable store: the lease expires by itself
            pass

    def __enter__(self) -> "Lease":
        self.check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
