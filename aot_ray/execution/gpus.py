"""The GPU memory of the connected Ray cluster's nodes, for the memory check and `micro_batch: auto`.

One tiny task per alive GPU node, pinned to it and asking for no resources, reads `nvidia-smi` (the GPUs' total
memory, whatever CUDA_VISIBLE_DEVICES says), else torch. A node that does not answer in time, or has neither, is
unknown: the sweep's declared sizes (`run.gpu_memory_gb`, `run.gpu_memory_gb_by_resource`) apply there.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Callable

TIMEOUT_S = 60.0


def _gpu_bytes() -> int | None:
    """The smallest GPU on this node, in bytes."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
            sizes = [int(float(x)) * 2**20 for x in out.split() if x.strip()]
            if sizes:
                return min(sizes)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    except Exception:  # a node whose torch cannot see a GPU: unknown
        pass
    return None


def gpu_nodes() -> list[tuple[dict[str, float], int]]:
    """(resources, GPU bytes) of every alive node with GPUs whose size could be read."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_gpu_bytes)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    out = []
    for n, ref in zip(nodes, refs):
        try:
            size = ray.get(ref, timeout=TIMEOUT_S)
        except Exception:  # a busy or unreachable node: its size stays unknown
            continue
        if size:
            out.append((n["Resources"], size))
    return out


def gpu_size_finder() -> Callable[[Any], "tuple[int | None, str]"]:
    """trial -> (the smallest GPU among the nodes that can run it, "the cluster"), or (None, "") if unknown."""
    nodes = gpu_nodes()

    def find(trial: Any) -> tuple[int | None, str]:
        fit = [size for res, size in nodes if all(res.get(k, 0) >= v for k, v in trial.resources.custom.items())]
        return (min(fit), "the cluster's GPUs") if fit else (None, "")

    return find
