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


def test_one_line_per_trial_that_fails_or_is_stopped_as_it_happens():
    from aot_ray.execution.progress import changes

    seen: dict[str, str] = {}
    # the first look: an earlier job's failure is not news
    assert changes(seen, {"a": ("FAILED", "old"), "b": ("RUNNING", ""), "c": ("RUNNING", "")}) == []
    said = changes(seen, {"a": ("FAILED", "old"), "b": ("FAILED", "ValueError: loss is nan at step 40"),
                          "c": ("KILLED", "")})
    assert said == ["trial b failed: ValueError: loss is nan at step 40",
                    "trial c stopped at its last checkpoint (interrupted): the next `aot-ray run` resumes it"]
    assert changes(seen, {"b": ("FAILED", "ValueError: loss is nan at step 40"), "c": ("KILLED", "")}) == []
    assert changes(seen, {"c": ("RUNNING", "")}) == []  # resumed: running again is not a line
    assert changes(seen, {"c": ("FAILED", "")}) == ["trial c failed: no error recorded (see its run in MLflow)"]


def test_the_live_line_draws_the_same_figures():
    import io

    from rich.console import Console

    from aot_ray.execution.progress import Live

    out = io.StringIO()
    live = Live(Console(file=out, force_terminal=True, width=160))
    f = figures({"a": ("FINISHED", 1000), "b": ("RUNNING", 500)}, {"a": 1000, "b": 1000}, {"a": None, "b": None},
                0, 10.0)
    live.show(f)
    task = live.bar.tasks[0]
    assert task.description == "1/2 trials, 1 running, 0 failed" and task.completed == 1500 and task.total == 2000
    assert task.fields["rest"] == "150 tok/s, ETA 0m03s"
    live.bar.refresh()
    assert "1/2 trials, 1 running" in out.getvalue() and "75.0%" in out.getvalue()
    live.close()


def test_quiet_default_and_verbose_flags():
    import argparse

    from aot_ray.execution.tune import tune_output, tune_verbosity
    from aot_ray.sweep.options import RunOptions, run_flags

    p = argparse.ArgumentParser()
    run_flags(p)
    assert [RunOptions.of(p.parse_args(a)).verbose for a in ([], ["--quiet"], ["--verbose"])] == [1, 0, 2]
    with pytest.raises(SystemExit):
        p.parse_args(["--quiet", "--verbose"])
    assert [tune_verbosity(v) for v in (0, 1, 2)] == [0, 0, 1]  # Tune's tables only with --verbose
    assert all(tune_output(v)["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1" for v in (0, 1, 2))  # no TensorBoard
    assert "RAY_AIR_NEW_OUTPUT" not in tune_output(2) and tune_output(1)["RAY_AIR_NEW_OUTPUT"] == "0"
