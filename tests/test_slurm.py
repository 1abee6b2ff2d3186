"""The pure parts of the Slurm job (aot_ray/cluster/slurm.py, slurm_job.py): port blocks, Slurm's per-node counts, GPUs
from Slurm's variables, the fit check, argument splitting. The job itself runs on a real Slurm in
test_slurm_integration.py."""

from __future__ import annotations

import socket

import pytest

from aot_ray.cluster.slurm import Ports, SlurmError, expand_counts, gpus_per_node
from aot_ray.cluster.slurm_job import check_allocation_fits, split_args
from aot_ray.spec import parse_sweep


def test_each_job_has_its_own_block_of_ports():
    blocks = [Ports.of_job(j) for j in range(200)]
    spans = sorted((p.base, p.base + 199) for p in blocks)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] < 60000
    p = Ports.of_job(7)
    used = [*p.head_ports(), *(v for i in range(1, 9) for v in p.node(i).values())]
    assert len(used) == len(set(used)) and all(p.base <= u < p.workers[0] for u in used)
    assert p.workers[1] == p.base + 199


def test_a_block_held_on_the_head_moves_the_job_to_the_next_free_one():
    job = 123
    with socket.socket() as held:
        held.bind(("127.0.0.1", Ports.of_job(job).mlflow))
        held.listen()
        moved = Ports.free_for_job(job, "127.0.0.1")
        assert moved != Ports.of_job(job) and moved != Ports.free_for_job(job + 1, "127.0.0.1")  # no pile-up
    assert Ports.free_for_job(job, "127.0.0.1") == Ports.of_job(job)


def test_slurms_counts_and_gpus():
    assert expand_counts("4(x2),2") == [4, 4, 2] and expand_counts("") == []
    with pytest.raises(SlurmError, match="per-node count"):
        expand_counts("4x2")
    assert gpus_per_node({"SLURM_GPUS_PER_NODE": "4"}) == 4
    assert gpus_per_node({"SLURM_GPUS_PER_NODE": "a100:2"}) == 2
    assert gpus_per_node({"SLURM_JOB_GRES": "gpu:a100:4"}) == 4 and gpus_per_node({"SLURM_GRES": "gpu:1"}) == 1
    assert gpus_per_node({"SLURM_JOB_GPUS": "0,2"}) == 2  # the job's GPUs by index, as Slurm set them
    assert gpus_per_node({}) == 0


def test_the_fit_check_names_the_trial_and_the_sbatch_option():
    spec = parse_sweep({"name": "fit", "data": {"p": {"kind": "primes", "digits": 2, "n_samples": 200, "windows": "stream"}},
                        "defaults": {"resources": {"cpu": 4, "gpu": 1}},
                        "grid": {"dataset": ["p"], "model": ["micro"], "context_length": [16]}})
    check_allocation_fits(spec, [8, 8], 1, 2)
    with pytest.raises(SlurmError, match="asks for 4 CPU and 1 GPU per process.*--cpus-per-task"):
        check_allocation_fits(spec, [2, 2], 1, 2)
    with pytest.raises(SlurmError, match="--gpus-per-node"):
        check_allocation_fits(spec, [8], 0, 1)


def test_run_options_follow_the_sweep_after_an_optional_separator():
    assert split_args(["s.yaml", "--", "--quiet"]) == ("s.yaml", ["--quiet"])
    assert split_args(["s.yaml", "--quiet"]) == ("s.yaml", ["--quiet"])
    with pytest.raises(SlurmError):
        split_args(["--quiet"])
