"""The sweep's progress figures and line (aot_ray/execution/progress.py), on numbers with known answers."""

from __future__ import annotations

import pytest

from aot_ray.execution.progress import figures, line


def test_counts_tokens_and_an_eta_from_this_drivers_own_throughput():
    planned = {"a": 1000, "b": 1000, "c": 1000, "d": 1000}
    gpu = {"a": 2.0, "b": 2.0, "c": 2.0, "d": 2.0}
    # a finished (by earlier jobs), b half way, c failed at 100 tokens, d not started
    latest = {"a": ("FINISHED", 900), "b": ("RUNNING", 500), "c": ("FAILED", 100)}
    f = figures(latest, planned, gpu, tokens_at_start=1000, elapsed_s=10.0)
    assert (f.finished, f.running, f.pending, f.failed) == (1, 1, 1, 1)
    assert f.tokens_done == 1000 + 500 + 100 and f.tokens_total == 4000  # a finished trial counts whole
    assert f.gpu_hours_done == pytest.approx(2 + 1 + 0.2) and f.gpu_hours_total == 8.0
    assert f.tokens_per_s == pytest.approx(60.0)  # (1600 - 1000) / 10 s: earlier jobs' work is not throughput
    assert f.eta_s == pytest.approx(2400 / 60.0)
    text = line(f)
    assert text.startswith("progress: 1/4 trials finished, 1 running, 1 pending, 1 failed")
    assert "tokens 1.6k/4.0k (40.0%)" in text and "GPU-hours 3.2/8.0" in text and "ETA 0m40s" in text
    m = f.metrics()
    assert m["sweep_trials_finished"] == 1 and m["sweep_tokens_fraction"] == pytest.approx(0.4)
    assert m["sweep_eta_s"] == pytest.approx(40.0)


def test_no_throughput_yet_and_cpu_sweeps_have_no_gpu_hours():
    f = figures({"a": ("KILLED", 300)}, {"a": 1000, "b": 1000}, {"a": None, "b": None}, 300, 5.0)
    assert (f.pending, f.tokens_done, f.tokens_per_s, f.eta_s, f.gpu_hours_total) == (2, 300, None, None, None)
    text = line(f)
    assert "throughput not yet known" in text and "ETA not yet known" in text and "GPU-hours" not in text
    assert "sweep_eta_s" not in f.metrics() and "sweep_gpu_hours_done" not in f.metrics()
