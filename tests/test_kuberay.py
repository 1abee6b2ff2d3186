"""cluster/kuberay/rayjob.yaml against KubeRay's own RayJob CRD schema (the v1 OpenAPI schema of
ray-project/kuberay's ray.io_rayjobs.yaml, vendored in tests/data/kuberay), strictly: an unknown field is an error,
as `kubectl apply --validate=strict` makes it (jsonschema alone would accept a misspelt field, which Kubernetes
prunes silently). Also what the schema cannot know: the entrypoint is a valid `aot-ray run` of a sweep that
loads, every trial fits a worker pod, and the Ray version matches the pinned one. Validated, not run: no
Kubernetes here."""

from __future__ import annotations

import copy
import gzip
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cluster" / "kuberay" / "rayjob.yaml"
SCHEMA = ROOT / "tests" / "data" / "kuberay" / "rayjob-v1.schema.json.gz"
SHARED = ROOT.parent / "shared" / "kuberay" / "ray.io_rayjobs.yaml"


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever Kubernetes would prune them."""
    s = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


def errors_of(manifest: dict) -> list[str]:
    import jsonschema

    schema = strict(json.loads(gzip.decompress(SCHEMA.read_bytes())))
    v = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(manifest)]


def manifest() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return doc


def test_the_rayjob_passes_kuberays_schema_strictly():
    doc = manifest()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert errors_of(doc) == []
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
               for g in workers for c in g["template"]["spec"]["containers"])


def test_the_strict_check_catches_what_kubernetes_would_drop_or_refuse():
    doc = manifest()
    typo = copy.deepcopy(doc)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in errors_of(typo))
    deep = copy.deepcopy(doc)
    deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 4
    assert any("replica" in e for e in errors_of(deep))
    wrong = copy.deepcopy(doc)
    wrong["spec"]["backoffLimit"] = "three"
    assert any("backoffLimit" in e for e in errors_of(wrong))


def test_the_entrypoint_is_a_sweep_that_fits_the_worker_pods():
    import ray

    from aot_ray.cli import _parser
    from aot_ray.cluster.slurm_job import check_allocation_fits
    from aot_ray.spec.load import load_sweep

    spec = manifest()["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert set(env) >= {"MLFLOW_TRACKING_URI", "AOT_STORAGE"}
    assert re.match(r"(s3|gs)://", env["AOT_STORAGE"])  # pods share no file system
    words = [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], w) for w in shlex.split(spec["entrypoint"])]
    assert words[:2] == ["aot-ray", "run"]
    args = _parser().parse_args(words[1:])
    assert args.storage == env["AOT_STORAGE"] and args.fixed_cluster and args.address is None  # $RAY_ADDRESS
    sweep = load_sweep(str(ROOT / args.sweep), args.sets)
    cluster = spec["rayClusterSpec"]
    pods = [(int(g["replicas"]), c["resources"]["limits"]) for g in cluster["workerGroupSpecs"]
            for c in g["template"]["spec"]["containers"]]
    cpus = [int(lim["cpu"]) for n, lim in pods for _ in range(n)]
    gpus = min(int(lim.get("nvidia.com/gpu", 0)) for _, lim in pods)
    check_allocation_fits(sweep, cpus, gpus, len(cpus))
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert cluster["rayVersion"] == pinned == ray.__version__
    base = re.search(r"^FROM rayproject/ray:(\S+)", (ROOT / "cluster/kuberay/Dockerfile").read_text(), re.M)
    assert base and base.group(1).startswith(pinned + "-")
    images = {c["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same image


def test_the_vendored_schema_is_kuberays():
    if not SHARED.exists():
        pytest.skip(f"{SHARED} (KubeRay's CRD as published) is not on this machine")
    crd = yaml.safe_load(SHARED.read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    assert json.loads(gzip.decompress(SCHEMA.read_bytes())) == v1
