#!/usr/bin/env bash
# The sweep's MLflow tracking server on the head: SQLite backend by default (or a database of yours), artifacts
# proxied by the server (to a folder on the head, or your bucket), bound to the head's private address
# (never 0.0.0.0), behind MLflow's own authentication (--app-name basic-auth): user aot, a password generated
# at the first start into $AOT_MLFLOW_DIR/credentials.json (readable by its owner only; the folder too) and
# recorded for the server's address in ~/.aot_ray/mlflow_credentials.json, where aot-ray's commands find it.
#   bash cluster/start_mlflow.sh         start (idempotent), wait until it answers, record its address
#   bash cluster/start_mlflow.sh stop    stop it (cluster/bin/ray runs this on `ray stop`, so `ray down` does)
# The address it chose is written to ~/.aot_ray/mlflow_uri, where the head's entry (aot_ray/cluster/head.py) reads it.
# MLflow answers 403 to Host headers other than localhost and private ranges unless --allowed-hosts names them:
# the head's own address and the loopback names (tunnels) are allowed, nothing else.
#   AOT_MLFLOW_HOST (default: the first of `hostname -I`), AOT_MLFLOW_PORT (5000), AOT_MLFLOW_DIR (~/mlflow),
#   AOT_MLFLOW_WAIT (seconds to wait for the first answer, 300)
#   AOT_MLFLOW_BACKEND  the backend store URI (default sqlite:///$AOT_MLFLOW_DIR/mlflow.db): a lab's or a cloud's
#                       managed PostgreSQL, postgresql+psycopg://USER:PASSWORD@HOST:5432/DB (install the
#                       aot-ray[postgres] extra), so that losing the head loses no runs
#   AOT_MLFLOW_ARTIFACTS  where the server puts artifacts (default $AOT_MLFLOW_DIR/artifacts): the cluster's
#                       bucket, s3://BUCKET/mlflow or gs://BUCKET/mlflow (aot-ray[s3] / aot-ray[gcs])
set -euo pipefail
project=$(cd "$(dirname "$0")/.." && pwd)
PORT=${AOT_MLFLOW_PORT:-5000}
HOST=${AOT_MLFLOW_HOST:-$(hostname -I | awk '{print $1}')}
DIR=${AOT_MLFLOW_DIR:-$HOME/mlflow}
WAIT=${AOT_MLFLOW_WAIT:-300}
BACKEND=${AOT_MLFLOW_BACKEND:-sqlite:///$DIR/mlflow.db}
ARTIFACTS=${AOT_MLFLOW_ARTIFACTS:-$DIR/artifacts}
PIDFILE=$DIR/server.pid
URI_FILE=$HOME/.aot_ray/mlflow_uri
PY=$project/.venv/bin/python

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/health", timeout=3).read()
PYEOF
}

if [ "${1:-start}" = stop ]; then
  if running; then
    pid=$(cat "$PIDFILE")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "mlflow server stopped (pid $pid)"
  fi
  rm -f "$PIDFILE" "$URI_FILE"
  exit 0
fi

URI="http://$HOST:$PORT"
mkdir -p "$DIR" "$(dirname "$URI_FILE")"
register() { "$PY" -m aot_ray.tracking.credentials register "$URI" "$DIR" >/dev/null; }
if running && answers "$URI"; then
  echo "$URI" > "$URI_FILE"
  register
  echo "mlflow already serving at $URI"
  exit 0
fi
# the auth settings and admin credentials of this server's folder (generated once, owner-only)
settings=$("$PY" -m aot_ray.tracking.credentials env "$DIR")
eval "$settings"
# its own session, so that stop takes the server's workers with it
setsid "$project/.venv/bin/mlflow" server --app-name basic-auth --host "$HOST" --port "$PORT" \
  --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" \
  --allowed-hosts "$HOST,$HOST:$PORT,localhost,localhost:$PORT,127.0.0.1,127.0.0.1:$PORT" \
  > "$DIR/server.log" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
for _ in $(seq "$WAIT"); do
  if answers "$URI"; then
    echo "$URI" > "$URI_FILE"
    register
    echo "mlflow serving at $URI (log: $DIR/server.log; user aot, password in $DIR/credentials.json)"
    exit 0
  fi
  if ! running; then
    echo "mlflow server exited before answering; the end of $DIR/server.log:" >&2
    tail -n 20 "$DIR/server.log" >&2
    exit 1
  fi
  sleep 1
done
echo "mlflow server at $URI did not answer within ${WAIT}s (log: $DIR/server.log)" >&2
exit 1
