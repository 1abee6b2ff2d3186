"""Node drains on a real two-node Ray on this machine (`ray start --head` on 127.0.0.1, `ray start --address` on
127.0.0.2) driven by a real `aot-ray run --address`: `ray drain-node` of the node running a trial, with a
deadline (what autoscaler v2 calls on a spot preemption notice), makes the trial checkpoint at the step it reached
and move to the other node: one MLflow run, one continuous curve, no step trained twice, no failure spent
(`run.max_failures` is 0). A node lost without notice is `test_cluster_integration`'s: the newest checkpoint."""

import json
import subprocess
import sys
import time

import pytest
import yaml

from aot_ray import tracking
from ray_nodes import RayNodes
from test_faults_integration import spec_dict
from test_reliability_integration import wait_for

pytestmark = pytest.mark.integration

# the test's own Ray client: holds the head's one CPU (so the trial starts on the other node) until released, and
# says which node is which
BLOCKER = """
import json, sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], logging_level="ERROR")
nodes = [n for n in ray.nodes() if n["Alive"]]
head = next(n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"])
other = next(n["NodeID"] for n in nodes if n["NodeID"] != head)
@ray.remote(num_cpus=1)
class Hold:
    def ready(self):
        return ray.get_runtime_context().get_node_id()
hold = Hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
assert ray.get(hold.ready.remote()) == head
print(json.dumps({"head": head, "other": other}), flush=True)
sys.stdin.read()  # until the test closes it: the actor ends with this driver
"""


def _wait(check, timeout, what, log):
    """`wait_for`, with the end of the driver's log when it times out."""
    try:
        return wait_for(check, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log.read_text()[-3000:]}") from None


def test_a_drained_node_s_trial_checkpoints_and_moves_to_the_other_node(tmp_path):
    pytest.importorskip("ray")
    nodes = RayNodes()
    raw = spec_dict("drain", steps=600, direction=["forward"])
    raw["run"]["max_failures"] = 0  # a move is no failure
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = tmp_path / "driver.log"
    blocker = driver = None
    try:
        nodes.head(1)
        nodes.add("127.0.0.2", 1)
        (tmp_path / "hold.py").write_text(BLOCKER)
        blocker = subprocess.Popen([sys.executable, str(tmp_path / "hold.py"), nodes.address], env=nodes.env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ids = json.loads(blocker.stdout.readline())
        with open(log, "w") as out:
            # the nodes share this machine's disk: what --shared-storage asserts
            driver = subprocess.Popen([sys.executable, "-m", "aot_ray.cli", "run", str(tmp_path / "s.yaml"),
                                       "--tracking-uri", uri, "--storage", str(tmp_path / "r"), "--address",
                                       nodes.address, "--shared-storage", "--quiet"],
                                      stdout=out, stderr=subprocess.STDOUT, env=nodes.env)
        c = tracking.client(uri)

        def running_at(step):
            (run,) = tracking.SweepRuns(uri, "drain").trials()
            steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_loss")]
            return run if steps and max(steps) >= step else None

        run = _wait(lambda: running_at(25), 240, "the trial's evaluation at step 25", log)
        assert run.data.tags["aot.node"] == ids["other"]  # the head's CPU is held
        drained = nodes.ray("drain-node", "--address", nodes.address, "--node-id", ids["other"], "--reason",
                            "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot preemption (test)",
                            "--deadline-remaining-seconds", "120")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        drained_at = time.time()
        blocker.stdin.close()  # the head's CPU is free: the trial's only place once its node drains
        blocker.wait(60)
        said = _wait(lambda: [ln for ln in log.read_text().splitlines() if "its node is draining" in ln], 60,
                     "the trial's checkpoint for the drain", log)
        stopped_at = int(said[0].split("checkpointed at step ")[1].split(",")[0])
        assert driver.wait(300) == 0, log.read_text()[-3000:]
    finally:
        for p in (driver, blocker):
            if p is not None and p.poll() is None:
                p.kill()
        nodes.stop()
    text = log.read_text()
    assert sum("is draining: its trials checkpoint" in ln for ln in text.splitlines()) == 1, text[-3000:]
    (run,) = tracking.SweepRuns(uri, "drain").trials()  # one MLflow run
    assert run.info.status == "FINISHED" and run.data.tags["aot.node"] == ids["head"]  # it moved
    resumed = [m.value for m in c.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert resumed == [stopped_at]  # from the checkpoint written at the drain, no step trained twice
    train = {m.step: m.timestamp for m in c.get_metric_history(run.info.run_id, "train_loss")}
    assert len(train) == len(c.get_metric_history(run.info.run_id, "train_loss"))  # no step logged twice
    assert stopped_at in train and set(range(5, 601, 5)) <= set(train)
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "val_loss")) == list(range(25, 601, 25))
    print(f"drain: the trial checkpointed {train[stopped_at] / 1000 - drained_at:.1f} s after `ray drain-node` "
          f"returned")
    print(f"drain: checkpointed at step {stopped_at} on the draining node, resumed at step {int(resumed[0])} on "
          f"the head: {stopped_at - int(resumed[0])} step(s) trained twice")
