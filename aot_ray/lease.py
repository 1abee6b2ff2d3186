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

from .errors import AotError

LEASE, RENEWED = "aot.driver", "aot.driver_renewed"
TTL_S = 90.0
RENEW_S = 20.0
SETTLE_S = 1.5


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
    from .tracking import experiment_id

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


class Lease:
    """`with Lease(uri, sweep) as lease:` refuses at once (AotError naming the holder) when another driver holds
    the sweep's lease, without writing anything; `lease.acquire()` inside the block takes it (just before the
    sweep's runs are opened), and leaving the block releases it."""

    def __init__(self, uri: str, sweep: str) -> None:
        self.uri, self.sweep = uri, sweep
        self.token = uuid.uuid4().hex
        self.who = f"aot-ray run on {socket.gethostname()} (pid {os.getpid()})"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, since: float) -> None:
        from .tracking import client, experiment_id, retry

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
        while not self._stop.wait(RENEW_S):
            try:
                self._write(start)
            except Exception:  # a tracking hiccup: the next renewal tries again, well inside the TTL
                continue

    def release(self) -> None:
        from .tracking import client, experiment_id

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
