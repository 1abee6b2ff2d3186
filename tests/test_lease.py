"""One driver per sweep: the lease on the sweep's MLflow experiment (real SQLite store, no Ray)."""

import json
import time

import pytest

from aot_ray.tracking import lease as L
from aot_ray.errors import AotError
from aot_ray.tracking import SweepRuns, client


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(L, "SETTLE_S", 0.05)


def test_a_second_driver_is_refused_naming_the_first_until_it_releases(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    first = L.Lease(uri, "sw")
    first.acquire()
    try:
        h = L.holder(uri, "sw")
        assert h is not None and h.token == first.token and "pid" in h.who
        with pytest.raises(AotError, match=r"sweep 'sw' is already being run by aot-ray run on .* \(pid \d+\), since "
                                           r".*lease renewed \d+ s ago"):
            L.Lease(uri, "sw").acquire()
    finally:
        first.release()
    assert L.holder(uri, "sw") is None
    with L.Lease(uri, "sw") as again:  # free again: the block checks, acquire takes it
        again.acquire()
        assert L.holder(uri, "sw").token == again.token
    assert L.holder(uri, "sw") is None


def test_a_dead_drivers_lease_expires(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    c = client(uri)
    exp = SweepRuns(uri, "sw").experiment(create=True)
    info = {"token": "t", "who": "aot-ray run on elsewhere (pid 1)", "since": time.time() - 500, "host": "elsewhere",
            "pid": 1}
    c.set_experiment_tag(exp, L.LEASE, json.dumps(info))
    c.set_experiment_tag(exp, L.RENEWED, repr(time.time() - 10))
    assert L.holder(uri, "sw") is not None  # renewed 10 s ago on another machine: held
    c.set_experiment_tag(exp, L.RENEWED, repr(time.time() - L.TTL_S - 1))
    assert L.holder(uri, "sw") is None  # not renewed within the TTL: expired
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    c.set_experiment_tag(exp, L.LEASE, json.dumps({**info, "host": socket.gethostname(), "pid": int(gone)}))
    c.set_experiment_tag(exp, L.RENEWED, repr(time.time()))
    assert L.holder(uri, "sw") is None  # on this machine, its process is gone: expired at once
    with L.Lease(uri, "sw") as taken:
        taken.acquire()
        assert L.holder(uri, "sw").token != "t"


def test_the_lease_is_renewed_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "RENEW_S", 0.1)
    monkeypatch.setattr(L, "CHECK_S", 0.05)
    uri = f"sqlite:///{tmp_path}/m.db"
    with L.Lease(uri, "sw") as held:
        held.acquire()
        first = L.holder(uri, "sw").renewed
        time.sleep(0.6)
        assert L.holder(uri, "sw").renewed > first


def test_at_the_start_a_slow_store_is_waited_for_and_a_silent_one_is_one_line(tmp_path, monkeypatch):
    """Before anything runs, one lease call may take up to the patience (a server still warming up on a busy
    node answered the first call in more than IO_TIMEOUT_S); a server that never answers is one TrackingError
    naming it, not a traceback."""
    import socket

    from aot_ray.errors import TrackingError

    monkeypatch.setattr(L, "IO_TIMEOUT_S", 0.2)
    uri = f"sqlite:///{tmp_path}/m.db"
    raw = L._raw

    def slow(*a):
        time.sleep(0.5)  # over IO_TIMEOUT_S, under the patience
        return raw(*a)

    monkeypatch.setattr(L, "_raw", slow)
    with L.Lease(uri, "sw", patience_s=3) as held:
        held.acquire()
        assert L.holder(uri, "sw", timeout=3).token == held.token
    monkeypatch.setattr(L, "_raw", raw)

    silent = socket.socket()  # accepts connections (the kernel's backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match=rf"the tracking store {uri} did not answer within 1 s, before "
                                                rf"anything started; check that it is up"):
            with L.Lease(uri, "sw", patience_s=1):
                pass
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()
