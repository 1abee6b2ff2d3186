"""Which MLflow store a command uses and whether it can be used: the URI (flag, environment, sweep, default),
the SQLite file behind it, a fail-fast reachability check, the MLflow client with retries, and where to look at
the runs. `tracking` builds the sweep's experiment and runs on top of it."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import TrackingError
from .credentials import PASSWORD, USERNAME, use_for

T = TypeVar("T")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def store_exists(uri: str) -> bool:
    """Whether the tracking store is there to be read: a server or database is taken as there (it is checked
    when used); a SQLite file only when it exists (planning and status never create one)."""
    db = sqlite_path(uri)
    return db is None or db.is_file()


def given_uri(flag: str | None = None, from_spec: str | None = None) -> str | None:
    """The tracking URI the user gave, in order of precedence: --tracking-uri, MLFLOW_TRACKING_URI, the sweep's
    run.tracking_uri; None when none was given (a Slurm job then starts a server of its own)."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or from_spec


def resolve_uri(flag: str | None = None, from_spec: str | None = None, cwd: str | Path | None = None) -> str:
    """The URI given (`given_uri`), else ./mlflow.db; a SQLite path made absolute."""
    uri = given_uri(flag, from_spec) or "sqlite:///mlflow.db"
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        # relative sqlite paths break as soon as a Ray worker runs in another directory
        uri = "sqlite:///" + str((Path(cwd or os.getcwd()) / db).resolve())
    return uri


# MLflow 3's UI opens in its GenAI workflow unless the page asks for the training one
TRAINING_VIEW = "?workflowType=machine_learning"


def experiment_page(base: str, experiment_id: str | None) -> str:
    """The address of a sweep's runs in the MLflow UI served at `base`, in its training-runs layout."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}{TRAINING_VIEW}" if experiment_id else base.rstrip("/")


def ui_hint(uri: str, sweep: str, experiment_id: str | None = None) -> str:
    """Where to look at a sweep's runs: a server's own address (it serves the UI), else the command that serves
    a file store (`mlflow ui --backend-store-uri` takes a store, not a server's URL) and the page to open."""
    if uri.startswith(("http://", "https://")):
        return (f"MLflow UI: {experiment_page(uri, experiment_id)}   (experiment '{sweep}'; from another machine: "
                f"ssh -L to that port)")
    return (f"MLflow UI: mlflow ui --backend-store-uri {uri}, then open "
            f"{experiment_page('http://127.0.0.1:5000', experiment_id)}   (experiment '{sweep}')")


def store_writable(uri: str) -> bool:
    """Whether this process may write the store, as far as can be told without writing: a SQLite file and its
    folder (the journal goes there) must be writable; a server is taken as writable (its refusal is caught)."""
    db = sqlite_path(uri)
    if db is None:
        return True
    return os.access(db.parent, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


def check_reachable(uri: str, timeout: float = 5.0, write: bool = True) -> None:
    """Fail fast, before anything starts, when the tracking store cannot be used; `write` False: reading is
    enough (plan, status, report work on a read-only store)."""
    db = sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise TrackingError(f"MLflow database folder {db.parent} does not exist; create it or pass --tracking-uri")
        if write and not store_writable(uri):
            what = f"folder {db.parent}" if not os.access(db.parent, os.W_OK) else f"file {db}"
            raise TrackingError(f"MLflow database {what} is not writable (a sweep writes its runs there); pass "
                                f"another --tracking-uri")
        if db.is_file():
            head = _sqlite_head(db)
            if head != b"SQLite format 3\x00":
                what = "an empty file" if not head else "not an SQLite database"
                raise TrackingError(f"{db} is {what}, not an MLflow database; remove it or pass another "
                                    f"--tracking-uri") from None
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise OSError(f"HTTP {r.status}")
        except (OSError, urllib.error.URLError) as e:
            why = getattr(e, "reason", e)
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({why}); start it "
                f"(mlflow server --host 127.0.0.1 --port 5000) or pass --tracking-uri sqlite:////abs/path/mlflow.db"
            ) from None
        check_credentials(uri, timeout)
        return
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as e:  # any backend MLflow supports: report its own reason on one line
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: {str(e).splitlines()[0]}") from None


def check_credentials(uri: str, timeout: float = 5.0) -> None:
    """A server that asks for credentials (MLflow's basic auth) must take this process's: those of MLflow's own
    variables, else the ones aot-ray recorded for a server it started at `uri` (`credentials.use_for`)."""
    import base64


    use_for(uri)
    req = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    if os.environ.get(USERNAME):
        token = base64.b64encode(f"{os.environ[USERNAME]}:{os.environ.get(PASSWORD, '')}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            given = f"user {os.environ[USERNAME]!r} was refused" if os.environ.get(USERNAME) else "none were given"
            raise TrackingError(f"the MLflow server at {uri} asks for credentials and {given} (HTTP {e.code}): set "
                                f"{USERNAME} and {PASSWORD}; a server aot-ray started records its own in "
                                f"~/.aot_ray/mlflow_credentials.json") from None
    except OSError:
        pass  # reachable a moment ago: the command's own calls will say what is wrong


def wait_for_server(uri: str, timeout_s: float, proc: Any = None, poll_s: float = 0.5) -> str | None:
    """Poll the `/health` of an MLflow server just started (`proc`: its process, when ours) until it answers.
    None once it does, else why not, in words: it exited first, or did not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return "exited before answering"
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3):
                return None
        except OSError:
            time.sleep(poll_s)
    return f"did not answer within {timeout_s:.0f} s"


def _sqlite_head(db: Path, settle_s: float = 10.0) -> bytes:
    """The first 16 bytes of a database file. An empty file that was just created may be a database another
    process (a concurrent driver, a report) is initialising right now: it gets `settle_s` to become one."""
    deadline = time.monotonic() + settle_s
    while True:
        with db.open("rb") as f:
            head = f.read(16)
        fresh = time.time() - db.stat().st_mtime < settle_s
        if head or not fresh or time.monotonic() > deadline:
            return head
        time.sleep(0.2)


def reason(e: BaseException) -> str:
    """Why a tracking call failed, in a few words (a refused connection, a timeout), else its first line."""
    text = str(e)
    for needle, words in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("Name or service not known", "unknown host"), ("did not answer within", None)):
        if needle in text:
            return words or text.splitlines()[0]
    return (text.splitlines()[0][:200] if text.strip() else type(e).__name__)


def client(uri: str):
    """MLflow's client of `uri`, logged in to a server aot-ray started there (`credentials.use_for`)."""
    from mlflow.tracking import MlflowClient


    use_for(uri)
    return MlflowClient(tracking_uri=uri)


def retry(fn: Callable[[], T], attempts: int = 4, delay: float = 0.5) -> T:
    for i in range(attempts):
        try:
            return fn()
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(delay * 2**i)
    raise AssertionError("unreachable")
