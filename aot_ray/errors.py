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
