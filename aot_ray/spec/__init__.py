"""Sweep specification: typed schema, YAML loading with path-named errors, and the pure expansion into trials."""

from .expand import content_hash, expand, flatten, lr_search_trials, trial_to_dict, with_learning_rates
from .load import load_sweep, load_sweep_text, parse_sweep
from .schema import (
    DATASET_KINDS,
    DIRECTIONS,
    DatasetSpec,
    HFData,
    LinearData,
    LrSearchSpec,
    ModelSpec,
    OptimSpec,
    PrimesData,
    ResourcesSpec,
    RunSpec,
    SignStopSpec,
    SweepSpec,
    TextData,
    TokenizerSpec,
    TrainSpec,
    TrialSpec,
    split_sizes,
)

__all__ = [
    "DATASET_KINDS", "DIRECTIONS", "DatasetSpec", "HFData", "LinearData", "TextData", "TokenizerSpec", "ModelSpec", "OptimSpec", "PrimesData",
    "ResourcesSpec", "RunSpec", "SignStopSpec", "SweepSpec", "TrainSpec", "TrialSpec", "content_hash", "expand", "flatten",
    "load_sweep", "load_sweep_text", "parse_sweep", "split_sizes", "trial_to_dict", "LrSearchSpec",
    "lr_search_trials", "with_learning_rates",
]
