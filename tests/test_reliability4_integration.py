"""Reliability round 4 through `aot-ray run` as a user types it: a trial worker frozen with SIGSTOP gets one
stall warning in the driver's output, and a garbled checkpoint that the resumed trial skips is named there too
(it used to reach Ray's worker logs only)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aot_ray import tracking
from test_faults_integration import spec_dict

pytestmark = pytest.mark.integration


def _wait(check, timeout, what, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_a_frozen_trial_is_warned_of_and_a_skipped_checkpoint_is_named_in_the_drivers_output(tmp_path):
    raw = spec_dict("frozen", steps=3000)
    raw["grid"]["model"] = ["micro"]
    raw["defaults"]["train"].update(eval_every=50, checkpoint_every=50, batch_size=8, threads=1)
    raw["run"].update(stall_warning_s=4, progress_every_s=1)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "aot_ray.cli", "run", str(tmp_path / "s.yaml"), "--tracking-uri", uri,
           "--storage", str(tmp_path / "r"), "--num-cpus", "2", "--quiet"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    c = tracking.client(uri)

    def evaluated_run():
        for r in tracking.SweepRuns(uri, "frozen").trials():
            if "aot.pid" in r.data.tags and c.get_metric_history(r.info.run_id, "val_loss"):
                return r
        return None

    run = _wait(evaluated_run, 240, "a trial's first evaluation", log)
    pid, tid = int(run.data.tags["aot.pid"]), run.data.tags["trial_id"]
    os.kill(pid, signal.SIGSTOP)
    try:
        warned = _wait(lambda: [ln for ln in log.read_text().splitlines() if "has made no progress for" in ln],
                       90, "the stall warning", log)
        assert len(warned) == 1 and f"warning: trial {tid} has made no progress for" in warned[0], warned
        time.sleep(3)  # still frozen: still one warning
        assert sum("has made no progress" in ln for ln in log.read_text().splitlines()) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    # the trial goes on; stop the sweep (Ctrl-C) once it has a checkpoint past the freeze
    experiment = _wait(lambda: next((p for p in (tmp_path / "r").glob("frozen-*") if p.is_dir()), None), 60,
                       "the experiment folder", log)
    _wait(lambda: len(list((experiment / tid).glob("checkpoint_*"))) >= 2, 120, "two checkpoints", log)
    first.send_signal(signal.SIGINT)
    assert first.wait(120) == 130, log.read_text()[-3000:]

    # the trial's newest checkpoint is garbled: the resumed trial skips it, and the driver says so in one line
    newest = max(experiment.joinpath(tid).glob("checkpoint_*"),
                 key=lambda p: int(yaml.safe_load((p / "meta.json").read_text())["step"]))
    (newest / "state.pt").write_bytes(b"garbled")
    log2 = tmp_path / "second.log"
    with open(log2, "w") as out:
        second = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        notes = _wait(lambda: [ln for ln in log2.read_text().splitlines() if ln.startswith(f"trial {tid}: ")], 240,
                      "the fall-back note", log2)
        assert len(notes) == 1 and f"skipped unreadable checkpoint {newest.name}" in notes[0], notes
        assert "resumed from the checkpoint at step" in notes[0]
    finally:
        second.send_signal(signal.SIGINT)
        second.wait(120)
