"""The benchmarks, each printing its figure against its target in the same run: the trainer against a plain
torch loop, GPU memory predicted against measured and packed trials (`python -m aot_ray.bench`: trainer.py),
data preparation against an encode loop (`python -m aot_ray.bench.prepare`), and the driver's control plane at
hundreds to thousands of MLflow runs (`python -m aot_ray.bench.control`). Imports nothing here: the GPU machine
runs the trainer's benchmark without Ray or MLflow."""
