import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# the node-local caches (fetched data, the report's reads of finished runs) in a folder of this session, not ~/.cache
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "AOT_RAY_CACHE" not in os.environ:
    os.environ["AOT_RAY_CACHE"] = tempfile.mkdtemp(prefix="aot-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AOT_RAY_CACHE"], True)

import pytest


def _local_ray(dashboard: bool):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=dashboard, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module, with an explicit CPU count; stopped after the module."""
    yield from _local_ray(dashboard=False)


@pytest.fixture(scope="module")
def ray_dashboard():
    """ray_local with its dashboard: Ray Train's placement-group cleaner asks the state API behind it."""
    yield from _local_ray(dashboard=True)
