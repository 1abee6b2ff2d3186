"""Credentials of the MLflow servers aot-ray starts itself (a cluster head's, `cluster/start_mlflow.sh`; a Slurm
job's): they run MLflow's own authentication (`mlflow server --app-name basic-auth`), so only their owner reads,
changes or deletes the runs.

Per server folder (the one holding its databases) a password is generated once, with the server's secret key,
in `credentials.json` (mode 0600, the folder 0700); MLflow's auth database there gets its admin user from it at
the server's first start (`server_env`), and keeps it. Whoever starts the server records its address in the
owner's `~/.aot_ray/mlflow_credentials.json` (0600; `register`). aot-ray's clients (every command, and through
Ray the trainers) use that record for the address they are given (`use_for`) unless MLflow's own variables
(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) are set. A credentials file others can read is refused.

    python -m aot_ray.tracking.credentials env FOLDER        shell lines exporting the server's settings
    python -m aot_ray.tracking.credentials register URI FOLDER
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
import sys
from pathlib import Path

from ..errors import TrackingError

USER = "aot"
CREDENTIALS = "credentials.json"
AUTH_CONFIG = "basic_auth.ini"
AUTH_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"  # MLflow's basic authentication
USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def registry_path() -> Path:
    return Path(os.environ.get("AOT_MLFLOW_CREDENTIALS") or Path.home() / ".aot_ray" / "mlflow_credentials.json")


def _private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, from its first byte on."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _read_private(path: Path) -> dict:
    """A credentials file's JSON; TrackingError when other users may read it (or it cannot be read)."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TrackingError(f"{path} holds MLflow credentials and other users may read it (mode "
                                f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}`")
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrackingError(f"cannot read MLflow credentials {path} ({e})") from None


def server_credentials(folder: str | Path) -> dict:
    """The server's credentials in `folder` (made private), generated at the first call."""
    folder = Path(folder)
    _private_dir(folder)
    path = folder / CREDENTIALS
    if not path.exists():
        _write_private(path, json.dumps({"username": USER, "password": secrets.token_urlsafe(24),
                                         "secret_key": secrets.token_hex(32)}))
    return _read_private(path)


def server_env(folder: str | Path) -> dict[str, str]:
    """The environment of `mlflow server --app-name basic-auth` for the server whose databases are in `folder`:
    its auth settings (users in `auth.db` there; nobody but the admin may read or write anything) and admin."""
    folder = Path(folder).resolve()
    creds = server_credentials(folder)
    _write_private(folder / AUTH_CONFIG, f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                                         f"database_uri = sqlite:///{folder / 'auth.db'}\n"
                                         f"admin_username = {creds['username']}\n"
                                         f"authorization_function = {AUTH_FUNCTION}\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(folder / AUTH_CONFIG), "MLFLOW_AUTH_ADMIN_USERNAME": creds["username"],
            "MLFLOW_AUTH_ADMIN_PASSWORD": creds["password"], "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["secret_key"]}


def client_env(folder: str | Path) -> dict[str, str]:
    """MLflow's client variables for the server of `folder`."""
    creds = server_credentials(folder)
    return {USERNAME: creds["username"], PASSWORD: creds["password"]}


def register(uri: str, folder: str | Path) -> Path:
    """Record that the server of `folder` answers at `uri` (an earlier address of the same server is dropped)."""
    creds = server_credentials(folder)
    path = registry_path()
    _private_dir(path.parent)
    known = _read_private(path) if path.exists() else {}
    folder = str(Path(folder).resolve())
    known = {u: v for u, v in known.items() if v.get("server") != folder}
    known[uri.rstrip("/")] = {"username": creds["username"], "password": creds["password"], "server": folder}
    _write_private(path, json.dumps(known, indent=2))
    return path


def use_for(uri: str) -> str | None:
    """Set MLflow's client variables in this process for a server aot-ray started at `uri`; the user name, or
    None when MLflow's own variables are set already, the URI is not a server's, or no record names it."""
    if not uri.startswith(("http://", "https://")) or os.environ.get(USERNAME):
        return None
    path = registry_path()
    if not path.exists():
        return None
    entry = _read_private(path).get(uri.rstrip("/"))
    if not entry:
        return None
    os.environ[USERNAME], os.environ[PASSWORD] = entry["username"], entry["password"]
    return entry["username"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["env"] and len(argv) == 2:
        for k, v in server_env(argv[1]).items():
            print(f"export {k}={shlex.quote(v)}")
        return 0
    if argv[:1] == ["register"] and len(argv) == 3:
        print(register(argv[1], argv[2]))
        return 0
    print("usage: python -m aot_ray.tracking.credentials env FOLDER | register URI FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except TrackingError as e:
        print(f"aot-ray: error: {e}", file=sys.stderr)
        sys.exit(2)
