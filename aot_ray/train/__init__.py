"""The trainer: plain torch, never imports Ray (the Tune adapter lives in `aot_ray.execution.tune`)."""

from .loop import TrainingDiverged, TrainResult, train
from .tracker_api import RecordingTracker, Tracker

__all__ = ["RecordingTracker", "Tracker", "TrainResult", "TrainingDiverged", "train"]
