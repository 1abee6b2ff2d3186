"""TrialTracker against a real MLflow store (SQLite, as the lease's tests): metrics are buffered and written in
batches, steps an earlier attempt already wrote are not written again, a failed write keeps the buffer, a
finished run is never reopened. The client is MLflow's own; a spy on its `log_batch` counts the batches and
turns the next writes into failures, as a server going down would."""

from __future__ import annotations

from pathlib import Path

import pytest

from aot_ray import tracking
from aot_ray.tracking import ERROR, INTERRUPTED, TrialTracker, store, trial_tracker as tracker_module

from specs import tiny_trials


class Spy:
    """Wraps the tracker's real client's `log_batch`: metrics per call, and `fail_next` calls that raise."""

    def __init__(self, t: TrialTracker) -> None:
        self.batches: list[int] = []
        self.fail_next = 0
        real = t.client.log_batch

        def log_batch(run_id, metrics=(), params=(), tags=()):
            if metrics and self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("server down")
            if metrics:
                self.batches.append(len(metrics))
            return real(run_id, metrics=list(metrics), params=list(params), tags=list(tags))

        t.client.log_batch = log_batch


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes a second); a sweep of its own per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('tracking')}/mlflow.db"


@pytest.fixture
def ctx(db, request, monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: None)  # retry's back-off
    monkeypatch.setattr(tracker_module.time, "sleep", lambda s: None)
    return tracking.SweepRuns(db, request.node.name[:60]).start("name: tiny")


def tracker(ctx, flush_every=500):
    from dataclasses import replace

    return TrialTracker(replace(ctx, system_metrics_s=0), tiny_trials("tiny")[0], flush_every=flush_every)


def history(ctx, run_id, key):
    return [m.step for m in sorted(tracking.client(ctx.uri).get_metric_history(run_id, key), key=lambda m: m.step)]


def run_of(ctx, run_id):
    return tracking.client(ctx.uri).get_run(run_id)


def test_metrics_are_buffered_and_written_in_batches(ctx):
    t = tracker(ctx, flush_every=4)
    spy = Spy(t)
    t.begin(resumed_from=None)
    t.log_metrics({"train_loss": 2.0, "lr": 1e-3}, step=1)
    assert spy.batches == []  # two metrics: still buffered
    t.log_metrics({"train_loss": 1.5, "lr": 1e-3}, step=2)
    assert spy.batches == [4]
    t.log_metrics({"train_loss": 1.2}, step=3)
    t.finish()
    assert spy.batches == [4, 1]
    run = run_of(ctx, t.run_id)
    assert run.info.status == "FINISHED" and history(ctx, t.run_id, "train_loss") == [1, 2, 3]
    assert run.data.tags["arch"] == "gpt2" and run.data.tags["aot.attempt"] == "1"


def test_a_resumed_run_does_not_write_steps_it_already_has(ctx):
    first = tracker(ctx)
    first.begin(resumed_from=None)
    first.log_metrics({"train_loss": 1.0}, step=5)
    first.log_metrics({"train_loss": 1.0, "val_loss": 1.0}, step=10)
    first.flush()
    first._stop_system_metrics()  # the attempt dies here (its run stays RUNNING)
    t = tracker(ctx)
    t.begin(resumed_from=10, run_id=first.run_id)
    assert t.run_id == first.run_id and run_of(ctx, t.run_id).data.tags["aot.attempt"] == "2"
    for step in (5, 10, 15):
        t.log_metrics({"train_loss": 1.0, "val_loss": 1.0}, step=step)
    t.flush()
    assert history(ctx, t.run_id, "train_loss") == [5, 10, 15]
    assert history(ctx, t.run_id, "val_loss") == [10, 15]


def test_a_failed_write_keeps_the_buffer_for_the_next_flush(ctx):
    t = tracker(ctx)
    spy = Spy(t)
    t.begin(resumed_from=None)
    t.log_metrics({"train_loss": 1.0}, step=1)
    spy.fail_next = 2  # both attempts of this flush
    with pytest.warns(UserWarning, match="1 metrics and 0 artifacts kept"):
        assert t.flush() is False
    assert history(ctx, t.run_id, "train_loss") == []
    assert t.flush() is True and spy.batches == [1] and history(ctx, t.run_id, "train_loss") == [1]


def test_errors_are_tagged_and_cleared_by_a_finished_attempt(ctx):
    t = tracker(ctx)
    t.begin(resumed_from=None)
    t.finish("FAILED", error="boom")
    assert run_of(ctx, t.run_id).data.tags[ERROR] == "boom"
    tracking.client(ctx.uri).set_tag(t.run_id, INTERRUPTED, "1")
    again = tracker(ctx)
    again.begin(resumed_from=0, run_id=t.run_id)
    again.finish()
    tags = run_of(ctx, t.run_id).data.tags
    assert ERROR not in tags and INTERRUPTED not in tags and run_of(ctx, t.run_id).info.status == "FINISHED"


def test_a_finished_run_is_never_reopened(ctx):
    t = tracker(ctx)
    t.begin(resumed_from=None)
    t.log_metrics({"val_loss": 1.0}, step=40)
    t.finish()
    with pytest.raises(RuntimeError, match="already has a FINISHED run"):
        tracker(ctx).begin(resumed_from=40, run_id=t.run_id)
    with pytest.raises(RuntimeError, match="already has a FINISHED run"):  # found by its trial id too
        tracker(ctx).begin(resumed_from=None)


def test_one_handle_on_a_sweeps_runs(ctx):
    runs = tracking.SweepRuns(ctx.uri, ctx.sweep)
    assert runs.experiment() == ctx.experiment_id and runs.parent_run_id == ctx.parent_run_id
    t = tracker(ctx)
    t.begin(resumed_from=None)
    t.finish()
    assert [r.info.run_id for r in runs.trials("FINISHED")] == [t.run_id]
    assert tracking.SweepRuns(ctx.uri, "other").trials() == [] and tracking.SweepRuns(ctx.uri, "other").parent() is None


def test_the_ui_hint_is_the_servers_address_or_the_command_that_serves_a_file_store():
    assert store.ui_hint("http://10.0.0.1:5000/", "s").startswith("MLflow UI: http://10.0.0.1:5000   ")
    assert "--backend-store-uri" not in store.ui_hint("https://mlflow.lab:443", "s")
    assert store.ui_hint("sqlite:////tmp/m.db", "s").startswith("MLflow UI: mlflow ui --backend-store-uri sqlite:")
    # the page that opens the sweep's runs in the training layout (MLflow 3 opens its GenAI workflow otherwise)
    assert "http://10.0.0.1:5000/#/experiments/7?workflowType=machine_learning" in store.ui_hint(
        "http://10.0.0.1:5000/", "s", "7")
    assert "then open http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning" in store.ui_hint(
        "sqlite:////tmp/m.db", "s", "7")


def test_sqlite_paths_and_whether_a_store_is_there(tmp_path):
    assert store.sqlite_path("sqlite:////a/b.db") == Path("/a/b.db")
    assert store.sqlite_path("http://h:5000") is None
    assert store.store_exists("http://h:5000") and not store.store_exists(f"sqlite:///{tmp_path}/none.db")
    (tmp_path / "m.db").write_bytes(b"")
    assert store.store_exists(f"sqlite:///{tmp_path}/m.db")
    assert store.resolve_uri("sqlite:///rel.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/rel.db"


@pytest.mark.slow  # seconds: the full suite runs it
def test_trial_runs_carry_mlflows_system_metrics(tmp_path):
    """MLflow's own SystemMetricsMonitor on the trial's run (CPU and memory here; GPU ones need a GPU and
    nvidia-ml-py), from begin to finish; off with system_metrics_s 0."""
    import time
    from dataclasses import replace

    from aot_ray.spec import expand, parse_sweep

    from specs import tiny_sweep

    (trial,) = expand(parse_sweep(tiny_sweep("sysm", grid={"direction": ["forward"]})))
    ctx = tracking.SweepRuns(f"sqlite:///{tmp_path}/mlflow.db", "sysm").start("x")
    tr = tracking.TrialTracker(replace(ctx, system_metrics_s=0.5), trial)
    tr.begin(None)
    time.sleep(2.5)
    tr.finish()
    c = tracking.client(ctx.uri)
    got = c.get_run(tr.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in got and "system/system_memory_usage_megabytes" in got
    other = expand(parse_sweep(tiny_sweep("sysm", grid={"direction": ["forward"], "seed": [1]})))[0]
    off = tracking.TrialTracker(replace(ctx, system_metrics_s=0), other)
    off.begin(None)
    time.sleep(1.0)
    off.finish()
    assert not any(k.startswith("system/") for k in c.get_run(off.run_id).data.metrics)


def test_waiting_for_a_server_says_why_it_never_answered():
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert store.wait_for_server(uri, 30, gone) == "exited before answering"
    assert store.wait_for_server(uri, 0.6, poll_s=0.2) == "did not answer within 1 s"
