"""Sweep specification: typed schema, YAML loading with path-named errors, and the pure expansion into trials."""

from .expand import content_hash, expand, flatten, trial_to_dict
from .load import load_sweep, parse_sweep
from .schema import (
    DATASET_KINDS,
    DIRECTIONS,
    DatasetSpec,
    LinearData,
    ModelSpec,
    OptimSpec,
    PrimesData,
    ResourcesSpec,
    RunSpec,
    SweepSpec,
    TrainSpec,
    TrialSpec,
    split_sizes,
)

__all__ = [
    "DATASET_KINDS", "DIRECTIONS", "DatasetSpec", "LinearData", "ModelSpec", "OptimSpec", "PrimesData",
    "ResourcesSpec", "RunSpec", "SweepSpec", "TrainSpec", "TrialSpec", "content_hash", "expand", "flatten",
    "load_sweep", "parse_sweep", "split_sizes", "trial_to_dict",
]
