"""A data-parallel trial (resources.workers > 1): Ray Train's TorchTrainer inside the Tune trial, 2 gloo workers
on CPU. It must match a single process, log one MLflow run from rank 0, report to Tune, and resume from its
checkpoint when a worker is SIGKILLed, ending where the uninterrupted run ends."""

import os
import signal
import threading
import time

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.data.prepare import prepare
from aot_ray.errors import AotError
from aot_ray.spec import expand, parse_sweep
from aot_ray.train import RecordingTracker, train
from aot_ray.execution.data_parallel import check_data_parallel_fits

from test_faults_integration import kill_when, spec_dict

pytestmark = pytest.mark.integration


def dp_spec(name, workers=2, sharding="ddp"):
    raw = spec_dict(name, steps=60, direction=["forward"])
    raw["defaults"]["train"].update(eval_every=15, checkpoint_every=15)
    raw["defaults"]["resources"] = {"cpu": 1, "workers": workers, "sharding": sharding}
    return raw


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_worker_killed_mid_run_resumes_and_ends_where_one_process_ends(tmp_path, ray_dashboard, sharding):
    """DDP, and FSDP (each worker reports its own shards; Ray Train merges them into one checkpoint, which the
    retry's workers read back)."""
    raw = dp_spec("dp", sharding=sharding)
    (trial,) = expand(parse_sweep(raw))
    reference = train(trial, RecordingTracker(), data=prepare(trial.data, tmp_path / "ref")[0])  # one process

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    killed = {}

    def killer(run):
        # Ray Train's controller registers a reported checkpoint a poll later than the worker wrote it; kill once
        # its snapshot lists one, or the retry has nothing to resume from and (rightly) starts over
        deadline = time.time() + 60
        while not list((tmp_path / "r").glob(f"*/data-parallel/{trial.trial_id}/checkpoint_manager_snapshot.json")):
            assert time.time() < deadline, "Ray Train never registered a checkpoint"
            time.sleep(0.1)
        killed["pid"] = int(run.data.tags["aot.pid"])  # rank 0's process
        os.kill(killed["pid"], signal.SIGKILL)

    t = threading.Thread(target=kill_when, args=(uri, "dp", 15, killer), daemon=True)
    t.start()
    out = sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0,
                    say=lambda _: None)
    t.join(5)
    assert "pid" in killed
    (outcome,) = out.ran
    assert outcome.ok and outcome.val_loss == pytest.approx(reference.val_loss, abs=1e-4)  # Tune saw the metrics

    c = tracking.client(uri)
    (run,) = tracking.SweepRuns(uri, "dp").trials()  # one run across both attempts, written by rank 0 alone
    assert run.info.status == "FINISHED"
    assert run.data.tags["aot.workers"] == "2" and run.data.tags["aot.attempt"] == "2"
    resumed = [m.value for m in c.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert resumed and resumed[0] >= 15 and resumed[0] % 15 == 0
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "train_loss")) == list(range(5, 61, 5))
    val = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "val_loss"))
    assert [s for s, _ in val] == [15, 30, 45, 60]
    assert val[-1][1] == pytest.approx(reference.val_loss, abs=1e-4)
    assert out.report["rows"][0]["val_loss"] == pytest.approx(reference.val_loss, abs=1e-4)
    # Ray Train kept the run's checkpoints under the experiment, named by trial id
    dp_dirs = [p for p in (tmp_path / "r").glob(f"dp-*/data-parallel/{trial.trial_id}/checkpoint_*") if p.is_dir()]
    assert dp_dirs
    if sharding == "fsdp":  # both workers' shards in each checkpoint, with their index and the rest of the state
        for d in dp_dirs:
            assert {p.name for p in (d / "shards").iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
            assert (d / "state.pt").exists() and (d / "meta.json").exists()


def test_a_data_parallel_trial_that_cannot_fit_is_refused_on_a_local_ray(ray_dashboard):
    trials = expand(parse_sweep(dp_spec("big", workers=4)))
    with pytest.raises(AotError, match=r"needs 4 workers: 4 CPU \(has 2\); lower resources.workers"):
        check_data_parallel_fits(trials, own_ray=True)
    said = []
    check_data_parallel_fits(trials, own_ray=False, say=said.append)  # a cluster may grow: a warning
    assert len(said) == 1 and "waits until the autoscaler adds nodes" in said[0]
    check_data_parallel_fits(expand(parse_sweep(dp_spec("fits"))), own_ray=True)


def test_errored_data_parallel_trial_restarts_from_scratch_when_asked(tmp_path, ray_dashboard):
    raw = dp_spec("dpnan")
    raw["defaults"]["train"]["debug_nan_at_step"] = 40  # after checkpoints at steps 15 and 30
    raw["run"]["max_failures"] = 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = lambda **kw: sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri,  # noqa: E731
                                                        storage=str(tmp_path / "r")), verbose=0, say=lambda _: None, **kw)
    (first,) = run().failed
    assert "training loss became nan at steps 36-40" in first.error  # the trainer's own message, through Train
    (again,) = run(restart_errored=True).failed
    assert "at steps 36-40" in again.error
    (trial_run,) = tracking.SweepRuns(uri, "dpnan").trials()
    c = tracking.client(uri)
    # started over: a new run, not a resume from the step-30 checkpoint Ray Train still had
    assert c.get_metric_history(trial_run.info.run_id, "resumed_from_step") == []
    assert trial_run.data.tags["aot.attempt"] == "1" and trial_run.info.status == "FAILED"


def test_a_trial_no_node_can_hold_is_refused_on_a_local_ray(ray_dashboard, tmp_path):
    """resources.cpu: 3 on a 2-CPU local Ray would wait forever: refused before anything starts, naming the
    trial; on a cluster, a warning."""
    raw = dp_spec("wide", workers=1)
    raw["defaults"]["resources"] = {"cpu": 3}
    trials = expand(parse_sweep(raw))
    with pytest.raises(AotError, match=r"trial \S+ needs 3 CPU on one node; the largest node has 2 CPU: it could "
                                       r"never start"):
        check_data_parallel_fits(trials, own_ray=True)
    said = []
    check_data_parallel_fits(trials, own_ray=False, say=said.append)
    assert len(said) == 1 and "waits until the autoscaler adds such a node" in said[0]
    raw["defaults"]["resources"] = {"cpu": 1, "gpu": 1}
    with pytest.raises(AotError, match=r"needs 1 GPU on one node; the largest node has 0 GPU"):
        check_data_parallel_fits(expand(parse_sweep(raw)), own_ray=True)
