"""An MLflow server outage during training: the trial goes on, and every metric reaches the run after recovery."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from aot_ray import tracking
from aot_ray.tracking import store
from aot_ray.data.prepare import prepare
from aot_ray.errors import TrackingError
from aot_ray.spec import expand, parse_sweep
from aot_ray.train import train
from ports import free_port

pytestmark = pytest.mark.integration


def start_server(tmp, port):
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    p = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--artifacts-destination", str(tmp / "art")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return p
        except OSError:
            time.sleep(0.3)
    os.killpg(p.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not start")


def stop_server(p):
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(30)


def test_training_survives_an_mlflow_outage(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        raw = {
            "name": "outage",
            "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}},
            "defaults": {"optim": {"warmup_steps": 2},
                         "train": {"steps": 60, "batch_size": 8, "eval_every": 10, "log_every": 5,
                                   "checkpoint_every": 0, "eval_windows": 8}},
            "grid": {"dataset": ["lin"], "model": ["tiny"], "context_length": [16], "direction": ["forward"]},
        }
        (trial,) = expand(parse_sweep(raw))
        data = prepare(trial.data, tmp_path / "store")[0]
        ctx = tracking.SweepRuns(uri, "outage").start("x")
        tracker = tracking.TrialTracker(ctx, trial)
        state = {"server": server}

        def on_report(metrics, path):
            if metrics["step"] == 20:
                stop_server(state["server"])  # down for steps 21..40: writes fail and are kept
            if metrics["step"] == 40:
                state["server"] = start_server(tmp_path, port)

        result = train(trial, tracker, data=data, on_report=on_report)
        tracker.finish()
        assert result.steps == 60
        server = state["server"]
        c = tracking.client(uri)
        assert sorted(m.step for m in c.get_metric_history(tracker.run_id, "train_loss")) == list(range(5, 61, 5))
        assert sorted(m.step for m in c.get_metric_history(tracker.run_id, "val_loss")) == list(range(10, 61, 10))
        assert {a.path for a in c.list_artifacts(tracker.run_id, "eval")} == {"eval/per_window.json",
                                                                             "eval/per_position.json", "eval/windows"}
        # the evaluations during the outage were kept and written once the server was back
        assert {a.path for a in c.list_artifacts(tracker.run_id, "eval/windows")} == {
            f"eval/windows/step-{s:08d}.json" for s in range(10, 61, 10)}
        assert c.get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        stop_server(server)


def test_unreachable_server_at_start_is_an_error_before_training():
    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking server"):
        store.check_reachable(f"http://127.0.0.1:{free_port()}")
