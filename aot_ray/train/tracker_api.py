"""What the trainer needs from experiment tracking; `tracking.TrialTracker` implements it on MLflow."""

from __future__ import annotations

from typing import Any, Protocol

# a key of the metrics the trainer hands to its `on_report`: what the driver should print about the trial in words
# (a checkpoint it could not resume from), once, with its first evaluation after the start
NOTE = "aot_note"
# a key of the report of a trial that stopped because its driver asked (`stop_notice`): the step it checkpointed at
STOPPED_AT = "aot_stopped_at"
# ... and why it stopped (what its `stop_notice` said): the sweep stops (NOTICE_STOP), or the trial's node is
# draining and the trial moves to another node (NOTICE_MOVE); a larger code wins where both are posted
STOP_WHY = "aot_stop_why"
NOTICE_MOVE, NOTICE_STOP = 1, 2


class Tracker(Protocol):
    run_id: str | None

    def begin(self, resumed_from: int | None, run_id: str | None = None) -> None:
        """Called once the trainer knows whether it resumes (from step `resumed_from`, logged to `run_id`)."""
        ...

    def holds(self, run_id: str | None, step: int) -> bool:
        """Whether the run holds every point logged up to `step` (a checkpoint there may be resumed from)."""
        ...

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def flush(self) -> None: ...

    def stop_requested(self) -> int | None:
        """A step at which the trial's pair was settled (the trainer then stops at this evaluation), or None."""
        ...

    def finish(self, status: str = "FINISHED", error: str | None = None, patience_s: float = 600.0) -> None:
        """Close the run (train_tracked calls it; the trainer itself never does)."""
        ...

    def carry(self) -> dict[str, Any] | None:
        """What a checkpoint written now carries so that its run holds every point up to it once resumed, even
        where the store took none of the latest points (`confirmed`: the step the run is known to hold)."""
        ...

    def replay(self, carried: dict[str, Any] | None) -> None:
        """On a resume, after `begin`: log what the checkpoint carried."""
        ...


class RecordingTracker:
    """Keeps everything in memory: for tests, benchmarks and running the trainer without MLflow."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: dict[str, Any] = {}
        self.stop_at: int | None = None  # set by a test to stop the trainer at its next evaluation

    def begin(self, resumed_from: int | None, run_id: str | None = None) -> None:
        self.resumed_from = resumed_from

    def holds(self, run_id: str | None, step: int) -> bool:
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.artifacts[artifact_file] = obj

    def flush(self) -> None:
        pass

    def stop_requested(self) -> int | None:
        return self.stop_at

    def finish(self, status: str = "FINISHED", error: str | None = None, patience_s: float = 600.0) -> None:
        self.status, self.error = status, error

    def carry(self) -> dict[str, Any] | None:
        return None

    def replay(self, carried: dict[str, Any] | None) -> None:
        pass
