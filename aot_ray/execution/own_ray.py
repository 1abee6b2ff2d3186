"""The processes of the Ray a driver starts for itself (`ray.init(address="local")`), recorded so that the next
`aot-ray run` of the same sweep can stop what a killed driver left behind (a SIGKILL gives Ray no chance to stop
its dashboard and runtime-env agents). Only processes recorded by a driver of this sweep that is gone are
touched, each checked by pid and start time: never another Ray. Linux (/proc); elsewhere it records nothing."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path


def _state_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"aot_ray-{os.getuid()}"


def record_path(key: str) -> Path:
    return _state_dir() / f"own-ray-{key}.json"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None when it is gone (or a
    zombie waiting to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def record(key: str, settle_s: float = 3.0) -> None:
    """Note this driver and every process below it (its own Ray's), replacing an earlier note of this sweep.
    Ray's raylet starts its agents just after `ray.init` returns: wait (up to `settle_s`) for the tree to settle."""
    seen: list[int] = []
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        now = sorted(_descendants(os.getpid()))
        if now == seen and now:
            break
        seen = now
        time.sleep(0.3)
    procs = [{"pid": p, "start": t} for p in seen if (t := _start_time(p)) is not None]
    path = record_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": {"pid": os.getpid(), "start": _start_time(os.getpid())},
                                   "procs": procs}))
        tmp.replace(path)
    except OSError:  # a note that cannot be written only loses the clean-up after a kill
        pass


def forget(key: str) -> None:
    record_path(key).unlink(missing_ok=True)


def clean_up_left(key: str, grace_s: float = 5.0) -> list[int]:
    """Stop the processes an earlier, now gone, driver of this sweep recorded; returns their pids."""
    path = record_path(key)
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    d = note.get("driver", {})
    if d.get("pid") and _start_time(int(d["pid"])) == d.get("start"):
        return []  # that driver still runs (its lease refuses this one)
    alive = [int(p["pid"]) for p in note.get("procs", []) if _start_time(int(p["pid"])) == p.get("start")]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_start_time(p) is not None for p in alive):
            time.sleep(0.1)
    path.unlink(missing_ok=True)
    return alive
