"""What drives Ray: session.py (Ray's session, what a multi-node cluster can reach, data preparation as Ray
tasks), tune.py (Tune's grid of trials), tune_state.py (Tune's state as a cache; checkpoints by step), lr_search.py
(Tune's OptunaSearch), data_parallel.py (Ray Train), gpus.py, own_ray.py, interrupt.py, progress.py."""

import os

# in the driver and in every trainer process (they import this package to run `tune._trainable`): no usage
# report to Ray's servers or telemetry to MLflow's, from machines that often cannot reach them anyway
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
