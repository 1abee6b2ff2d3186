"""Micro-batches built ahead on a background thread, in pinned host memory when they go to a GPU.

The batch of (step, pass) is a pure function of the trial's data seed (see `data.windows.BatchOrder`), so
building ahead changes nothing but timing: the trainer's thread only launches the asynchronous copies and the
GPU never waits on numpy gathering windows.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np
import torch

MakeBatch = Callable[[int, int], "tuple[np.ndarray, np.ndarray]"]


class Prefetcher:
    """Yields (inputs, targets) on `device` for passes 0..passes-1 of steps start..end-1, in order."""

    def __init__(self, make: MakeBatch, start: int, end: int, passes: int, device: torch.device,
                 ahead: int = 4) -> None:
        self.device = device
        self.pin = device.type == "cuda"
        self._q: queue.Queue = queue.Queue(maxsize=max(2, ahead))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(make, start, end, passes), daemon=True,
                                        name="aot-batches")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, make: MakeBatch, start: int, end: int, passes: int) -> None:
        try:
            for step in range(start, end):
                for p in range(passes):
                    x, y = (torch.from_numpy(a) for a in make(step, p))
                    if self.pin:
                        x, y = x.pin_memory(), y.pin_memory()
                    if not self._put((step, p, x, y)):
                        return
        except BaseException as e:  # surfaced in the trainer's thread, at the batch that failed
            self._put((None, None, e, None))

    def get(self, step: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        got_step, got_p, x, y = self._q.get()
        if got_step is None:
            raise x
        assert (got_step, got_p) == (step, p), f"batch ({got_step}, {got_p}) arrived for ({step}, {p})"
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
