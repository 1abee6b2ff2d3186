"""Ray for the duration of a sweep: connect to a cluster or start a Ray of our own (listening on 127.0.0.1 only; it
stops only what was started, with what a killed earlier driver left of its own Ray), refuse a multi-node cluster
that cannot reach the sweep's storage or tracking store, and prepare the distinct datasets as Ray tasks."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Iterator

from ..data.prepare import prepare
from ..errors import AotError
from ..storage import Storage
from . import own_ray
from .interrupt import keep_sigterm


# Ray binds its servers (GCS, raylet, object manager, workers, agents, Prometheus metrics) to the node's address,
# which this setting of Ray's makes the loopback address: the single-machine mode Ray uses where it runs no
# cluster. Ray reads it once, when it is first imported.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def loopback_only() -> bool:
    """Make a Ray this process starts for itself answer on 127.0.0.1 only (nothing another machine can reach);
    False when it is too late (Ray was imported before in this process) or a user's setting says otherwise."""
    if "ray" in sys.modules:
        return os.environ.get(SINGLE_MACHINE) == "0"
    os.environ.setdefault(SINGLE_MACHINE, "0")
    return os.environ[SINGLE_MACHINE] == "0"


TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TOKEN_NOTICE not in record.getMessage()


def quiet_token_notice() -> None:
    """Drop Ray's notice that it enabled token authentication on a local Ray (its logger, by name; once)."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenNotice) for f in log.filters):
        log.addFilter(_DropTokenNotice())


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, dashboard: bool = False,
             log_to_driver: bool = True) -> bool:
    """Connect to `address` (else $RAY_ADDRESS) or start a local Ray of our own; False when Ray was already
    initialised by the caller.
    A local Ray gets its dashboard (on 127.0.0.1) only with `dashboard`: Ray Train's placement-group cleaner
    asks the state API behind it whether a data-parallel run's controller is still alive."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": dashboard, "configure_logging": True, "logging_level": "WARNING",
                              "log_to_driver": log_to_driver}
    address = address or os.environ.get("RAY_ADDRESS")  # set for drivers started by `ray job submit`
    if address:
        kwargs["address"] = address
        # the trainers on the cluster's other nodes write to the tracking server with the driver's credentials
        creds = {k: os.environ[k] for k in CREDENTIAL_VARS if os.environ.get(k)}
        if creds:
            kwargs["runtime_env"] = {"env_vars": creds}
    else:
        # "local": a Ray of our own, never whichever other Ray on this machine started last
        kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus)
        # Ray turns token authentication on for it (it guards the local Ray against other users of the machine)
        # and says so in a warning the user can do nothing about: that one line is dropped
        quiet_token_notice()
    with keep_sigterm():
        ray.init(**kwargs)
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                dashboard: bool = False, owner: str | None = None, say: Any = print,
                log_to_driver: bool = True) -> Iterator[bool]:
    """Ray for the duration of a sweep: connect or start, and shut down only what this call started.
    Yields whether this call started a Ray of its own (no autoscaler can add nodes to it). `owner` (a key of
    the sweep): a Ray of its own is recorded (`own_ray`), and what a killed earlier driver of the same sweep left
    of its own Ray is stopped first."""
    own = not (address or os.environ.get("RAY_ADDRESS")) and not _ray_initialized()
    if own and not loopback_only():
        warnings.warn("Ray was imported before this process started its own Ray, whose servers therefore listen "
                      "on every interface, not only 127.0.0.1 (`aot-ray run` imports Ray only once it starts it)")
    import ray


    if own and owner:
        left = own_ray.clean_up_left(owner)
        if left:
            say(f"stopped {len(left)} process(es) that a killed earlier driver of this sweep left of its own Ray "
                f"(pids {', '.join(map(str, left))})")
    started = init_ray(address, num_cpus, num_gpus, dashboard, log_to_driver)
    if started and own and owner:
        own_ray.record(owner)
    try:
        yield started and own
    finally:
        if started:
            with keep_sigterm():  # its core worker leaves SIGTERM at the default (killed, no clean-up) otherwise
                ray.shutdown()
            if own and owner:
                own_ray.forget(owner)


def prepare_on_ray(items: dict[str, tuple[str, Any]], storage: Storage, progress: bool) -> dict[str, tuple[str, bool, dict]]:
    """Prepare distinct datasets in parallel, one Ray task each: {hash: (where, spec)} -> {hash: (path, built, manifest)}."""
    import ray
    from ray.exceptions import RayTaskError


    @ray.remote(num_cpus=1)
    def _prepare(data: Any, where: str) -> tuple[str, bool, dict]:
        prepared, built = prepare(data, storage, where, progress=progress)
        return prepared.location, built, prepared.manifest

    refs = {h: _prepare.remote(data, where) for h, (where, data) in items.items()}
    out = {}
    for h, ref in refs.items():
        try:
            out[h] = ray.get(ref)
        except RayTaskError as e:
            if isinstance(e.cause, AotError):
                raise e.cause from None
            raise
    return out


def check_cluster(storage: Storage, uri: str, shared_storage: bool) -> int:
    """On more than one node, refuse storage or tracking that only one node can reach; returns the node count."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        if not storage.remote and not shared_storage:
            raise AotError(
                f"storage {storage} is a local path and the cluster has {len(nodes)} nodes: trials on other nodes "
                f"could not read its prepared data or checkpoints; use s3://... or gs://..., or a shared file system "
                f"path with --shared-storage")
        if uri.startswith("sqlite:") and not shared_storage:
            raise AotError(
                f"tracking URI {uri} is a local SQLite file and the cluster has {len(nodes)} nodes; start an MLflow "
                f"server on the head and pass --tracking-uri http://HEAD:5000")
    return len(nodes)
