"""User-facing errors: each renders as one line that names the field, file or fix; the CLI exits 2 on them."""

from __future__ import annotations


class AotError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""


class SpecError(AotError):
    """A sweep YAML problem at a dotted YAML path such as `grid.context_length[2]`."""

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.path}: " if self.path else ""
        prefix = f"{self.source}: " if self.source else ""
        return f"{prefix}{where}{self.message}"

    def with_source(self, source: str) -> "SpecError":
        return SpecError(self.path, self.message, source)


class DataError(AotError):
    """A dataset cannot be generated, prepared or read."""


class TrackingError(AotError):
    """The MLflow tracking store cannot be reached or used."""


class StorageError(AotError):
    """A storage root that cannot be used, or a name that would put a file outside its root."""


class RunGone(TrackingError):
    """A trial's MLflow run was deleted (or never existed) under its trainer: its writes can never land, so the
    trial ends in one line instead of retrying them."""


class DiskFull(AotError):
    """A write ran out of space; the message names the path, the size that did not fit and what is free."""


def disk_full(e: BaseException, path: str, need_bytes: int | None = None) -> DiskFull | None:
    """A DiskFull naming `path` when `e` is a no-space-left error (errno ENOSPC, also as pyarrow words it), else
    None."""
    import errno
    import shutil

    from .storage import is_remote  # storage imports this module's errors: a circle at import time

    if not (getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)):
        return None
    free = ""
    if not is_remote(path):
        try:
            from pathlib import Path

            probe = next(p for p in (Path(path), *Path(path).parents) if p.exists())
            free = f", {shutil.disk_usage(probe).free / 1e6:.1f} MB free"
        except (OSError, StopIteration):
            pass
    need = f" ({need_bytes / 1e6:.1f} MB to write{free})" if need_bytes else (f" ({free[2:]})" if free else "")
    return DiskFull(f"no space left on device at {path}{need}; free space there or pass another --storage, then "
                    f"run the same command: the sweep resumes from its saved checkpoints")


class StopRequested(KeyboardInterrupt):
    """The driver asked the trial to stop (its `stop_notice`); it checkpointed first. An interruption: its run
    is closed KILLED and the sweep resumes it. (Here, not in train/: the driver's side catches it without torch.)"""
