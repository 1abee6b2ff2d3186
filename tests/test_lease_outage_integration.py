"""One driver per sweep, whatever the tracking server does (reliability round 4): a real `mlflow server` is
SIGKILLed under a running `aot-ray run` and stays down until that driver has given up, then is restarted on the
same database.

The first driver stops its sweep on its own before its lease could expire, its trials checkpoint first and it
says so in one line; a second driver started during the outage is refused; the same command once the server is
back resumes each trial from the checkpoint it stopped at, in the same run, and every curve ends up with each
step once, no gap and no duplicate."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from aot_ray import tracking
from aot_ray.tracking import lease as L
from ports import free_port
from test_faults_integration import spec_dict
from test_outage_integration import start_server, stop_server

pytestmark = pytest.mark.integration

STEPS, LOG, EVAL = 6000, 5, 100


def _command(tmp_path, uri):
    raw = spec_dict("lease-outage", steps=STEPS)
    raw["grid"]["model"] = ["micro"]
    raw["defaults"]["train"].update(eval_every=EVAL, log_every=LOG, checkpoint_every=1000, batch_size=8,
                                    threads=1)
    raw["run"].update(tracking_patience_s=20, progress_every_s=5)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    return [sys.executable, "-m", "aot_ray.cli", "run", str(tmp_path / "s.yaml"), "--tracking-uri", uri, "--storage",
            str(tmp_path / "r"), "--num-cpus", "2", "--quiet"]


def _evaluated(uri):
    c = tracking.client(uri)
    runs = tracking.SweepRuns(uri, "lease-outage").trials()
    return len(runs) == 2 and all(c.get_metric_history(r.info.run_id, "val_loss") for r in runs)


def _wait(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_tracking_outage_never_lets_two_drivers_run_one_sweep(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = _command(tmp_path, uri)
    try:
        with open(tmp_path / "first.log", "w") as log:
            first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _wait(lambda: _evaluated(uri), 240, "both trials' first evaluation")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        killed = time.monotonic()

        # a second driver during the outage: refused in one line, nothing started
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 2 and "cannot reach the MLflow tracking server" in second.stderr, second.stderr
        assert "Traceback" not in second.stdout + second.stderr

        rc = first.wait(L.TTL_S + 60)
        ended = time.monotonic() - killed
        out = (tmp_path / "first.log").read_text()
        assert rc == 2, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        # its lease was renewed at most RENEW_S before the kill: it ended before that lease could expire
        assert ended < L.TTL_S - L.RENEW_S, (ended, out[-3000:])
        stops = [ln for ln in out.splitlines() if "stopping the sweep before its lease expires" in ln]
        assert len(stops) == 1 and "2 of 2 running trial(s) checkpointed (" in stops[0], out[-3000:]
        stopped_at = {part.split(" at step ")[0].strip(): int(part.split(" at step ")[1])
                      for part in stops[0].split("checkpointed (")[1].rstrip(")").split(", ")}
        errors = [ln for ln in out.splitlines() if ln.startswith("aot-ray: error:")]
        assert len(errors) == 1 and "is lost" in errors[0], errors

        # the server comes back as soon as the first driver ended: what the lease's expiry adds after that (a
        # driver elsewhere may take it) is test_lease's; waiting out the TTL here would cost a minute and test nothing
        server = start_server(tmp_path, port)
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "resuming 2 unfinished trial(s)" in again.stdout

        c = tracking.client(uri)
        from mlflow.entities import ViewType

        exp = c.get_experiment_by_name("lease-outage")
        every = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=100)
        trials = [r for r in every if r.data.tags.get(tracking.ROLE) == "trial"]
        assert len(trials) == 2 and all(r.info.lifecycle_stage == "active" for r in trials)  # one run per trial
        assert {r.info.status for r in trials} == {"FINISHED"}
        parents = [r for r in every if r.data.tags.get(tracking.ROLE) == "sweep"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        for r in trials:
            tid = r.data.tags["trial_id"]
            for key, every_ in (("train_loss", LOG), ("val_loss", EVAL)):
                steps = [m.step for m in c.get_metric_history(r.info.run_id, key)]
                assert steps == sorted(set(steps)) or sorted(steps) == sorted(set(steps)), (tid, key)
                # each step once: every logged one, and the loss of the steps since it at the step the trial stopped
                grid = set(range(every_, STEPS + 1, every_))
                assert len(steps) == len(set(steps)) and grid <= set(steps), (tid, key)
                assert set(steps) - grid <= ({stopped_at[tid]} if key == "train_loss" else set()), (tid, key)
            resumed = [m.value for m in c.get_metric_history(r.info.run_id, "resumed_from_step")]
            assert resumed == [stopped_at[tid]], (tid, resumed, stopped_at)  # from the checkpoint it stopped at
    finally:
        if server.poll() is None:
            stop_server(server)
