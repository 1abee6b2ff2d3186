"""Sweep progress while it runs: one line at a steady interval (trials finished / running / pending / failed,
tokens and GPU-hours done against the plan, throughput so far, ETA), and the same figures as metrics on the
sweep's parent run (`sweep_*`, at step = seconds since the driver started), so the MLflow UI charts the sweep.

It runs on a thread of the driver, never on Tune's event loop; each refresh is one search of the sweep's runs.
The same search tells a stalled trial (`Stalls`): a running run whose `train_step` has not moved for long gets
one warning line.
The figures are pure (`figures`, `line`), computed from the runs' latest `tokens` and the plan's tokens per
trial. Throughput counts only the tokens trained since this driver started, so a resumed sweep's ETA is not
flattered by the work of earlier jobs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..costs import trial_cost
from ..tracking import ERROR, TRIAL_STATE, SweepRuns, client

# the progress line's groups of the trial states of `tracking.TRIAL_STATE`: an interrupted trial waits to run again,
# like one that never started (this driver resumes it)
GROUP = {"TERMINATED": "finished", "RUNNING": "running", "ERROR": "failed", "INTERRUPTED": "pending",
         "PENDING": "pending"}


@dataclass(frozen=True, kw_only=True)
class Figures:
    finished: int
    running: int
    pending: int
    failed: int
    tokens_done: int
    tokens_total: int
    gpu_hours_done: float | None  # None: no GPU trial in the plan
    gpu_hours_total: float | None
    tokens_per_s: float | None  # since this driver started
    eta_s: float | None

    def metrics(self) -> dict[str, float]:
        out = {"sweep_trials_finished": self.finished, "sweep_trials_running": self.running,
               "sweep_trials_pending": self.pending, "sweep_trials_failed": self.failed,
               "sweep_tokens_done": self.tokens_done,
               "sweep_tokens_fraction": self.tokens_done / self.tokens_total if self.tokens_total else 0.0}
        if self.gpu_hours_done is not None:
            out["sweep_gpu_hours_done"] = self.gpu_hours_done
        if self.tokens_per_s is not None:
            out["sweep_tokens_per_s"] = self.tokens_per_s
        if self.eta_s is not None:
            out["sweep_eta_s"] = self.eta_s
        return {k: float(v) for k, v in out.items()}


def figures(latest: dict[str, tuple[str, int]], planned: dict[str, int], gpu_hours: dict[str, float | None],
            tokens_at_start: int, elapsed_s: float) -> Figures:
    """`latest`: trial_id -> (MLflow status, latest `tokens`) of the sweep's runs; `planned`: trial_id -> the
    tokens it trains (every trial of the sweep); `gpu_hours`: trial_id -> its planned GPU-hours (None: a CPU
    trial). Trials without a run are pending; a finished trial counts its planned tokens (a stopped pair too:
    its remaining work is not to be done)."""
    counts = {"finished": 0, "running": 0, "pending": 0, "failed": 0}
    done = 0
    gpu_done = 0.0
    for trial_id, total in planned.items():
        status, tokens = latest.get(trial_id, ("", 0))
        state = GROUP.get(TRIAL_STATE.get(status, "PENDING"), "pending")
        counts[state] += 1
        got = total if state == "finished" else min(tokens, total)
        done += got
        gpu_done += (gpu_hours.get(trial_id) or 0.0) * (got / total if total else 0.0)
    total_tokens = sum(planned.values())
    gpu_total = sum(h for h in gpu_hours.values() if h) if any(gpu_hours.values()) else None
    rate = (done - tokens_at_start) / elapsed_s if elapsed_s > 0 and done > tokens_at_start else None
    eta = (total_tokens - done) / rate if rate else None
    return Figures(**counts, tokens_done=done, tokens_total=total_tokens,
                   gpu_hours_done=gpu_done if gpu_total is not None else None, gpu_hours_total=gpu_total,
                   tokens_per_s=rate, eta_s=eta)


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _duration(s: float) -> str:
    s = int(round(s))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def line(f: Figures) -> str:
    total = f.finished + f.running + f.pending + f.failed
    frac = f.tokens_done / f.tokens_total if f.tokens_total else 0.0
    parts = [f"progress: {f.finished}/{total} trials finished, {f.running} running, {f.pending} pending, "
             f"{f.failed} failed",
             f"tokens {_count(f.tokens_done)}/{_count(f.tokens_total)} ({frac:.1%})"]
    if f.gpu_hours_total is not None:
        parts.append(f"GPU-hours {f.gpu_hours_done:.1f}/{f.gpu_hours_total:.1f}")
    parts.append(f"{_count(f.tokens_per_s)} tokens/s" if f.tokens_per_s else "throughput not yet known")
    parts.append(f"ETA {_duration(f.eta_s)}" if f.eta_s is not None else "ETA not yet known")
    return " | ".join(parts)


class Stalls:
    """Which running trials stopped making progress: `see(trial_id -> step, now)` with the running trials' latest
    `train_step` returns one warning line per trial that has not moved for `after_s` and for 5 times the longest
    wait between its earlier moves (a trial that logs rarely is not flagged for it); once per stall."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._moved: dict[str, tuple[Any, float, float]] = {}  # trial -> (step, when it moved, longest wait)
        self._warned: set[str] = set()

    def see(self, steps: dict[str, Any], now: float) -> list[str]:
        out = []
        for tid, step in steps.items():
            last, when, longest = self._moved.get(tid, (None, now, 0.0))
            if tid not in self._moved or step != last:
                self._moved[tid] = (step, now, max(longest, now - when) if tid in self._moved else 0.0)
                self._warned.discard(tid)
                continue
            idle = now - when
            if self.after_s > 0 and idle >= max(self.after_s, 5 * longest) and tid not in self._warned:
                self._warned.add(tid)
                at = f"step {int(step)}" if step is not None else "before its first logged step"
                out.append(f"warning: trial {tid} has made no progress for {idle:.0f} s ({at}); its worker may be "
                           f"frozen, swapped out or hung: it is not stopped (run.stall_warning_s sets this warning)")
        for tid in set(self._moved) - set(steps):  # no longer running
            self._moved.pop(tid)
            self._warned.discard(tid)
        return out


LIVE_S = 5.0  # how often a live line (a terminal) is redrawn: one search of the sweep's runs each time


def changes(seen: dict[str, str], now: dict[str, tuple[str, str]]) -> list[str]:
    """One line per trial whose newest run failed or was stopped since the last look (`seen`: trial -> status,
    updated in place; `now`: trial -> (status, its error's first line)). A trial first seen so is an earlier job's
    and gets no line."""
    out = []
    for tid, (status, error) in sorted(now.items()):
        before = seen.get(tid)
        seen[tid] = status
        if before is None or before == status:
            continue
        if status == "FAILED":
            out.append(f"trial {tid} failed: {error or 'no error recorded (see its run in MLflow)'}")
        elif status == "KILLED":
            out.append(f"trial {tid} stopped at its last checkpoint (interrupted): the next `aot-ray run` resumes it")
    return out


def _last_line(error: str) -> str:
    """The line of a recorded error that names it (a traceback's last), cut to fit a terminal line or two."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class Live:
    """One live line on a terminal (rich): the trials, a bar of the planned tokens done, throughput and ETA, redrawn
    in place; lines said meanwhile print above it."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import BarColumn, Progress as Bar, TextColumn

        # narrow enough for an 80-column terminal: the trials, a short bar of the planned tokens, speed and ETA
        self.bar = Bar(TextColumn("{task.description}"), BarColumn(bar_width=16),
                       TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[rest]}"), transient=True,
                       console=console)
        self.task = self.bar.add_task("starting", total=1, rest="")
        self.bar.start()

    def show(self, f: Figures) -> None:
        total = f.finished + f.running + f.pending + f.failed
        rate = f"{_count(f.tokens_per_s)} tok/s" if f.tokens_per_s else "speed not known yet"
        eta = f", ETA {_duration(f.eta_s)}" if f.eta_s is not None else ""
        self.bar.update(self.task, total=max(f.tokens_total, 1), completed=f.tokens_done,
                        description=f"{f.finished}/{total} trials, {f.running} running, {f.failed} failed",
                        rest=f"{rate}{eta}")

    def close(self) -> None:
        self.bar.stop()


class Progress:
    """The driver's progress thread for one sweep: `start()` once the sweep's runs are open, `stop()` at the end
    (one last line). A failed read or write skips that refresh. With `live` (a terminal), one line redrawn every
    `LIVE_S` instead of a line every `every_s`; the parent run's `sweep_*` metrics are logged every `every_s`
    either way. Each trial that fails or is stopped gets one line as it happens."""

    def __init__(self, ctx: Any, trials: list[Any], every_s: float, say: Callable[[str], None],
                 gpu_tflops: float = 250.0, stall_warning_s: float = 0.0, live: bool = False) -> None:
        self.ctx, self.every_s, self.say = ctx, every_s, say
        self.live: Live | None = Live() if live else None
        self._logged_at = float("-inf")  # when the sweep_* metrics were last logged (monotonic)
        self._seen: dict[str, str] = {}  # trial -> the status of its newest run, as last seen
        self.runs = SweepRuns(ctx.uri, ctx.sweep, ctx.parent_run_id)
        costs = {t.trial_id: trial_cost(t, gpu_tflops) for t in trials}
        self.planned = {k: int(c["tokens"]) for k, c in costs.items()}
        self.gpu_hours = {k: c["gpu_hours"] for k, c in costs.items()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._at_start: int | None = None
        self.last: Figures | None = None
        self.stalls = Stalls(stall_warning_s)

    def _latest(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        steps: dict[str, Any] = {}  # the running trials' latest train_step
        ends: dict[str, tuple[str, str]] = {}
        for r in self.runs.trials():  # newest first
            tid = r.data.tags.get("trial_id")
            if tid in self.planned and tid not in out:
                out[tid] = (r.info.status, int(r.data.metrics.get("tokens", 0)))
                ends[tid] = (r.info.status, _last_line(r.data.tags.get(ERROR, "")))
                if r.info.status == "RUNNING":
                    steps[tid] = r.data.metrics.get("train_step")
        for said in [*changes(self._seen, ends), *self.stalls.see(steps, time.monotonic())]:
            self.say(said)
        return out

    def refresh(self, final: bool = False) -> Figures | None:
        try:
            latest = self._latest()
            elapsed = time.monotonic() - self._t0
            if self._at_start is None:
                self._at_start = figures(latest, self.planned, self.gpu_hours, 0, 0).tokens_done
                self._t0 = time.monotonic()
                elapsed = 0.0
            f = figures(latest, self.planned, self.gpu_hours, self._at_start, elapsed)
        except Exception:
            return None
        self.last = f
        due = time.monotonic() - self._logged_at >= self.every_s - 0.5  # every_s apart, whatever the redraws
        if self.live is not None:
            self.live.show(f)
        elif due or final:
            self.say(line(f))
        if not (due or final):
            return f
        self._logged_at = time.monotonic()
        try:
            from mlflow.entities import Metric

            now, step = int(time.time() * 1000), int(elapsed)
            client(self.ctx.uri).log_batch(self.ctx.parent_run_id,
                                           metrics=[Metric(k, v, now, step) for k, v in f.metrics().items()])
        except Exception:
            pass  # the line is out; the chart misses one point
        return f

    def _loop(self) -> None:
        self.refresh()  # the baseline: what earlier jobs of the sweep did
        while not self._stop.wait(min(LIVE_S, self.every_s) if self.live is not None else self.every_s):
            self.refresh()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="aot-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.live is not None:
            self.live.close()
            self.live = None
        if self._thread is not None:
            self.refresh(final=True)  # the last line stays in the terminal (and in a log)
