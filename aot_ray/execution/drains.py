"""Node drains: a trial on a node that Ray is draining checkpoints at its current step and moves to another node.

Ray announces a node's end before it comes: `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION
--deadline-remaining-seconds N` is what autoscaler v2 calls for a spot node's preemption notice, and a person or
a cloud's own hook can call it too. From then on the node is DRAINING: Ray places nothing new on it, and the node
goes once its work has ended (or at the deadline, when its provider takes it).

- The driver watches (`DrainWatch`, a thread of its own: never Tune's loop): one call to the GCS for the cluster's
  node states every `POLL_S` seconds (what `ray status` shows), and for each node newly draining one file in the
  Tune experiment's folder, `.aot-drain/<node id>`.
- Each trial looks for its own node's file with the sweep's stop notice (`notices.notice_check`, after every step,
  a stat at most every few seconds). A data-parallel trial's workers look for their own nodes' files and for the
  node of the Tune process that drives them.
- Once there, the trial checkpoints at the step it reached and reports it (NOTICE_MOVE), and the sweep's Tune
  scheduler (`pause_on_notice`) answers that report with PAUSE: Tune keeps the checkpoint and stops the
  trial's actor, without counting a failure (`run.max_failures` is for errors), and starts the trial again, first
  among those waiting, wherever Ray has room, which is never the draining node. The trial resumes from that
  checkpoint into the same MLflow run: no step is trained twice.

A node that ends without notice is a failure as before: its trials go on from their newest checkpoints when
`run.max_failures` allows a retry, or at the sweep's next run.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from .. import storage
from ..train.tracker_api import NOTICE_MOVE, NOTICE_STOP, STOP_WHY
from .notices import notice_check, stop_path

DRAIN_DIR = ".aot-drain"
POLL_S = 2.0  # the driver's look at the node states: one GCS call (a few ms)


def drain_path(experiment_path: str, node_id: str) -> str:
    """The drain notice of one node (its Ray node id in hex) for the trials of one Tune experiment."""
    return storage.under(storage.join(experiment_path, DRAIN_DIR), node_id, what="Ray node id")


def trial_notice(experiment_path: str, *nodes: str | None) -> Callable[[], int]:
    """A trial's look for its notices: the sweep's stop notice (NOTICE_STOP) and the drain notices of the nodes
    it runs on (NOTICE_MOVE): a trial's own node; a data-parallel worker's, and the node of the Tune process that
    drives its run (were that one to go, the whole run would)."""
    drains = {drain_path(experiment_path, n): NOTICE_MOVE for n in set(nodes) if n}
    return notice_check({stop_path(experiment_path): NOTICE_STOP, **drains})


def draining_nodes(gcs_address: str) -> dict[str, str]:
    """The cluster's draining nodes, node id -> address, as the GCS has them now."""
    from ray.autoscaler.v2.sdk import get_cluster_status  # what `ray status` reads

    status = get_cluster_status(gcs_address, timeout=10)
    return {n.node_id: n.ip_address for n in [*status.active_nodes, *status.idle_nodes]
            if n.node_status == "DRAINING" and n.node_id}


class DrainWatch:
    """The driver's watch over its cluster's nodes while the grid runs (a context manager): posts each draining
    node's notice for the experiment at `experiment_path`, and says so in one line."""

    def __init__(self, experiment_path: str, gcs_address: str, say: Callable[[str], None] = print,
                 poll_s: float = POLL_S, nodes: Callable[[str], dict[str, str]] = draining_nodes) -> None:
        self.path, self.gcs, self.say, self.poll_s, self.nodes = experiment_path, gcs_address, say, poll_s, nodes
        self.posted: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aot-drain-watch", daemon=True)

    def __enter__(self) -> "DrainWatch":
        # notices an earlier driver posted: those nodes are gone (a node id is never reused)
        storage.remove_tree(storage.join(self.path, DRAIN_DIR))
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 15)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.look()
                failures = 0
            except Exception as e:  # the GCS busy or restarting: look again; say so once if it lasts
                failures += 1
                if failures == 3:
                    self.say(f"aot-ray: warning: the cluster's node states cannot be read "
                             f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); node drains are "
                             f"not seen until they can")
            self._stop.wait(self.poll_s)

    def look(self) -> list[str]:
        """One look: post the notices of nodes newly draining; returns their ids."""
        new = {n: ip for n, ip in self.nodes(self.gcs).items() if n not in self.posted}
        for node, ip in sorted(new.items()):
            storage.write_text(drain_path(self.path, node),
                               json.dumps({"node": node, "address": ip, "seen": time.time()}))
            self.posted.add(node)
            self.say(f"aot-ray: node {node[:8]} ({ip}) is draining: its trials checkpoint at their current step "
                     f"and move to other nodes")
        return sorted(new)


def pause_on_notice() -> Any:
    """The sweep's Tune scheduler: Tune's FIFO scheduling, but a trial that reports it checkpointed on a notice
    is paused: Tune then stops its actor at once (a trial left to run would get another `train` call, which
    blocks the actor's stop until Tune's 10 s force-kill at the end). On a draining node's notice (NOTICE_MOVE)
    paused trials start again, before trials that never ran, on other nodes; once one trial answered the sweep's
    stop notice (NOTICE_STOP) no trial starts any more, paused or pending: the sweep is stopping."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class PauseOnNotice(FIFOScheduler):
        stopping = False

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            why = result.get(STOP_WHY)
            if why == NOTICE_STOP:
                self.stopping = True
            if why in (NOTICE_MOVE, NOTICE_STOP):
                return TrialScheduler.PAUSE
            return super().on_trial_result(tune_controller, trial, result)

        def choose_trial_to_run(self, tune_controller: Any) -> Any:
            if self.stopping:
                return None
            for trial in tune_controller.get_trials():
                if trial.status == Trial.PAUSED:  # it holds progress, and its place on a node it had to leave
                    return trial
            return super().choose_trial_to_run(tune_controller)

    return PauseOnNotice()
