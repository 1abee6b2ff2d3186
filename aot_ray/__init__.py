"""aot_ray: Arrow-of-Time sweeps for language models, orchestrated by Ray Tune and tracked in MLflow."""

__version__ = "0.1.0"
