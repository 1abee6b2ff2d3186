"""Losing the node that runs a trial (2 worker nodes simulated on one machine): the trial is rescheduled on the
other node and resumes from its checkpoint."""

import threading

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.spec import parse_sweep

from test_faults_integration import kill_when, spec_dict

pytestmark = pytest.mark.integration


def test_trial_survives_the_loss_of_its_node(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0,  # trials can only run on the workers
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
    })
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    raw = spec_dict("nodeloss", steps=300, direction=["forward"])
    raw["run"]["max_failures"] = 3
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    removed = {}

    def remove_its_node(run):
        node = next(n for n in workers if n.node_id == run.data.tags["aot.node"])
        removed["node_id"] = node.node_id
        cluster.remove_node(node, allow_graceful=False)

    try:
        from aot_ray.errors import AotError

        with pytest.raises(AotError, match=r"is a local path and the cluster has 3 nodes"):
            sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0,
                      say=lambda _: None)
        t = threading.Thread(target=kill_when, args=(uri, "nodeloss", 100, remove_its_node), daemon=True)
        t.start()
        # one machine: the "nodes" share its disk, which is what --shared-storage asserts
        out = sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0,
                        say=lambda _: None, shared_storage=True)
        t.join(5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed and not out.failed
    (run,) = tracking.SweepRuns(uri, "nodeloss").trials()
    assert run.info.status == "FINISHED"
    assert run.data.tags["aot.node"] != removed["node_id"]  # the last attempt ran on the surviving node
    c = tracking.client(uri)
    resumed = [m.value for m in c.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert resumed and resumed[0] >= 100 - 25 and resumed[0] % 25 == 0  # one checkpoint may be in flight
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "val_loss")) == list(range(25, 301, 25))


def test_gpu_fractions_and_custom_resources_place_trials(tmp_path):
    """Nodes declaring a fake GPU or a custom resource: trials land only where their request fits, and two
    half-GPU trials share the one GPU node at the same time (training falls back to CPU: torch sees no CUDA)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    mem_node = cluster.add_node(num_cpus=2, resources={"bigmem": 2})
    cluster.add_node(num_cpus=2)  # a plain node that neither kind of trial may use
    ray.init(address=cluster.address)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        gpu = spec_dict("gpu", steps=150)
        gpu["defaults"]["resources"] = {"cpu": 1, "gpu": 0.5}
        mem = spec_dict("mem", steps=40)
        mem["defaults"]["resources"] = {"cpu": 1, "custom": {"bigmem": 1}}
        for raw in (gpu, mem):
            out = sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0,
                            say=lambda _: None, shared_storage=True)
            assert len(out.ran) == 2 and not out.failed
    finally:
        ray.shutdown()
        cluster.shutdown()
    gpu_runs = tracking.SweepRuns(uri, "gpu").trials()
    assert {r.data.tags["aot.node"] for r in gpu_runs} == {gpu_node.node_id}
    (a, b) = sorted(gpu_runs, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time  # both halves of the GPU were in use at once
    assert {r.data.tags["aot.node"] for r in tracking.SweepRuns(uri, "mem").trials()} == {mem_node.node_id}
    assert all(r.data.params["train.device"] == "auto" for r in gpu_runs)
