"""TrialTracker against a fake MLflow client: metrics are buffered and written in batches, steps an earlier
attempt already wrote are not written again, a failed write keeps the buffer, a finished run is never reopened."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from aot_ray import store, tracking
from aot_ray.tracking import ERROR, INTERRUPTED, SweepContext, TrialTracker

from specs import tiny_trials


class FakeClient:
    """The slice of MlflowClient that TrialTracker uses, in memory."""

    def __init__(self):
        self.runs: dict[str, SimpleNamespace] = {}
        self.history: dict[tuple[str, str], list] = {}
        self.batches: list[int] = []  # metrics per log_batch call
        self.fail_next = 0

    def add_run(self, status="RUNNING", metrics=None, tags=None):
        run_id = f"r{len(self.runs)}"
        self.runs[run_id] = SimpleNamespace(
            info=SimpleNamespace(run_id=run_id, status=status, lifecycle_stage="active"),
            data=SimpleNamespace(metrics=dict(metrics or {}), tags=dict(tags or {})))
        for key, steps in (metrics or {}).items():
            self.history[(run_id, key)] = [SimpleNamespace(step=s) for s in steps]
        return run_id

    def create_run(self, experiment_id, run_name, tags):
        return self.runs[self.add_run(tags=tags)]

    def get_run(self, run_id):
        return self.runs[run_id]

    def get_metric_history(self, run_id, key):
        return self.history.get((run_id, key), [])

    def update_run(self, run_id, status):
        self.runs[run_id].info.status = status

    def set_terminated(self, run_id, status="FINISHED"):
        self.runs[run_id].info.status = status

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if metrics and self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("server down")
        if metrics:
            self.batches.append(len(metrics))
        for m in metrics:
            self.history.setdefault((run_id, m.key), []).append(m)
            self.runs[run_id].data.metrics[m.key] = m.value
        for t in tags:
            self.runs[run_id].data.tags[t.key] = t.value

    def set_tag(self, run_id, key, value):
        self.runs[run_id].data.tags[key] = value

    def delete_tag(self, run_id, key):
        self.runs[run_id].data.tags.pop(key, None)

    def log_dict(self, run_id, obj, name):
        pass


@pytest.fixture
def fake(monkeypatch):
    client = FakeClient()
    monkeypatch.setattr(tracking, "client", lambda uri: client)
    monkeypatch.setattr(tracking, "find_trial_run", lambda *a, **k: None)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)  # retry's back-off
    return client


def tracker(flush_every=500):
    ctx = SweepContext(uri="http://fake", experiment_id="1", parent_run_id="p", sweep="tiny")
    return TrialTracker(ctx, tiny_trials("tiny")[0], flush_every=flush_every)


def test_metrics_are_buffered_and_written_in_batches(fake):
    t = tracker(flush_every=4)
    t.begin(resumed_from=None)
    t.log_metrics({"train_loss": 2.0, "lr": 1e-3}, step=1)
    assert fake.batches == []  # two metrics: still buffered
    t.log_metrics({"train_loss": 1.5, "lr": 1e-3}, step=2)
    assert fake.batches == [4]
    t.log_metrics({"train_loss": 1.2}, step=3)
    t.finish()
    assert fake.batches == [4, 1] and fake.runs[t.run_id].info.status == "FINISHED"
    assert fake.runs[t.run_id].data.tags["arch"] == "gpt2" and fake.runs[t.run_id].data.tags["aot.attempt"] == "1"


def test_a_resumed_run_does_not_write_steps_it_already_has(fake):
    run_id = fake.add_run(metrics={"train_loss": [5, 10], "val_loss": [10]}, tags={"aot.attempt": "1"})
    t = tracker()
    t.begin(resumed_from=10, run_id=run_id)
    assert t.run_id == run_id and fake.runs[run_id].data.tags["aot.attempt"] == "2"
    for step in (5, 10, 15):
        t.log_metrics({"train_loss": 1.0, "val_loss": 1.0}, step=step)
    t.flush()
    assert [m.step for m in fake.history[(run_id, "train_loss")]] == [5, 10, 15]
    assert [m.step for m in fake.history[(run_id, "val_loss")]] == [10, 15]


def test_a_failed_write_keeps_the_buffer_for_the_next_flush(fake):
    t = tracker()
    t.begin(resumed_from=None)
    t.log_metrics({"train_loss": 1.0}, step=1)
    fake.fail_next = 2  # both attempts of this flush
    with pytest.warns(UserWarning, match="1 metrics and 0 artifacts kept"):
        assert t.flush() is False
    assert t.flush() is True and fake.batches == [1]


def test_errors_are_tagged_and_cleared_by_a_finished_attempt(fake):
    t = tracker()
    t.begin(resumed_from=None)
    t.finish("FAILED", error="boom")
    assert fake.runs[t.run_id].data.tags[ERROR] == "boom"
    fake.runs[t.run_id].data.tags[INTERRUPTED] = "1"
    again = tracker()
    again.begin(resumed_from=0, run_id=t.run_id)
    again.finish()
    assert ERROR not in fake.runs[t.run_id].data.tags and INTERRUPTED not in fake.runs[t.run_id].data.tags


def test_a_finished_run_is_never_reopened(fake):
    run_id = fake.add_run(status="FINISHED", metrics={"val_loss": [40]})
    with pytest.raises(RuntimeError, match="already has a FINISHED run"):
        tracker().begin(resumed_from=40, run_id=run_id)


def test_the_ui_hint_is_the_servers_address_or_the_command_that_serves_a_file_store():
    assert store.ui_hint("http://10.0.0.1:5000/", "s").startswith("MLflow UI: http://10.0.0.1:5000   ")
    assert "--backend-store-uri" not in store.ui_hint("https://mlflow.lab:443", "s")
    assert store.ui_hint("sqlite:////tmp/m.db", "s").startswith("MLflow UI: mlflow ui --backend-store-uri sqlite:")


def test_sqlite_paths_and_whether_a_store_is_there(tmp_path):
    assert store.sqlite_path("sqlite:////a/b.db") == Path("/a/b.db")
    assert store.sqlite_path("http://h:5000") is None
    assert store.store_exists("http://h:5000") and not store.store_exists(f"sqlite:///{tmp_path}/none.db")
    (tmp_path / "m.db").write_bytes(b"")
    assert store.store_exists(f"sqlite:///{tmp_path}/m.db")
    assert store.resolve_uri("sqlite:///rel.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/rel.db"


def test_trial_runs_carry_mlflows_system_metrics(tmp_path):
    """MLflow's own SystemMetricsMonitor on the trial's run (CPU and memory here; GPU ones need a GPU and
    nvidia-ml-py), from begin to finish; off with system_metrics_s 0."""
    import time
    from dataclasses import replace

    from aot_ray.spec import expand, parse_sweep

    from specs import tiny_sweep

    (trial,) = expand(parse_sweep(tiny_sweep("sysm", grid={"direction": ["forward"]})))
    ctx = tracking.start_sweep(f"sqlite:///{tmp_path}/mlflow.db", "sysm", "x")
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
