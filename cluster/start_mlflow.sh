#!/usr/bin/env bash
# Start the sweep's MLflow tracking server on the head, bound to its private address (never 0.0.0.0), with a
# SQLite backend and artifacts proxied by the server. Idempotent: a running server is left alone.
set -euo pipefail
PORT=${AOT_MLFLOW_PORT:-5000}
HOST=${AOT_MLFLOW_HOST:-$(hostname -I | awk '{print $1}')}
DIR=${AOT_MLFLOW_DIR:-$HOME/mlflow}
mkdir -p "$DIR"
if curl -sf "http://$HOST:$PORT/health" >/dev/null 2>&1; then
  echo "mlflow already serving at http://$HOST:$PORT"
  exit 0
fi
nohup mlflow server --host "$HOST" --port "$PORT" \
  --backend-store-uri "sqlite:///$DIR/mlflow.db" --artifacts-destination "$DIR/artifacts" \
  > "$DIR/server.log" 2>&1 &
echo "mlflow serving at http://$HOST:$PORT (log: $DIR/server.log)"
