"""`plan` at scale: the identity hash computed from a cell serialized once equals the content hash of the whole
dict (so trial ids do not move), plan imports no statistics library, and the benchmark's sweep is 10,000 trials.
The 1 s target itself is the benchmark's (`python -m aot_ray.bench.plan`), never a timed test."""

import random

import yaml

from aot_ray.bench import plan as bench
from aot_ray.spec import expand, parse_sweep
from aot_ray.spec.expand import _fragments, _hash_of, content_hash


def test_a_cell_serialized_once_hashes_as_the_whole_dict():
    rng = random.Random(0)
    for _ in range(200):
        cell = {f"k{rng.randrange(50)}": rng.choice([1, 2.5, "x", None, True, [1, "a"], {"z": 1, "a": [2.0]}])
                for _ in range(rng.randrange(1, 8))}
        extra = {"seed": rng.randrange(5), "direction": rng.choice(["forward", "backward", "mine"])}
        assert _hash_of({**_fragments(cell), **_fragments(extra)}) == content_hash({**cell, **extra})


def test_plan_imports_no_statistics_library_and_the_bench_sweep_is_10k_trials(tmp_path):
    assert len(expand(parse_sweep(bench.sweep()))) == 10_000
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(bench.sweep(n_seeds=1)))
    _, scipy, rows = bench.cold(path, tmp_path)
    assert rows == 200 and scipy is False
