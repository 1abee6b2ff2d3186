"""The trainer: plain torch, never imports Ray (the Tune adapter lives in `aot_ray.execution.tune`)."""

from .loop import TrainingDiverged, TrainResult, train
from .tracker import MemoryTracker, Tracker

__all__ = ["MemoryTracker", "Tracker", "TrainResult", "TrainingDiverged", "train"]
