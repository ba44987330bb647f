#!/usr/bin/env bash
# `make ui`: the MLflow UI over the checkout's store and the Prefect UI, both on loopback.
source "$(dirname "$0")/common.sh"
cd "$PAPERWORKS_ROOT"
load_env "$PAPERWORKS_ROOT/infra/mlflow/server.env"
mkdir -p "$PAPERWORKS_ROOT/mlflow" "$MLFLOW_ARTIFACTS_DESTINATION"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
mlflow server --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" >"$PAPERWORKS_ROOT/mlflow/server.log" 2>&1 &
pids+=($!)
if [ -n "${PREFECT_API_URL:-}" ] && wait_http "$PREFECT_API_URL/health" 2 "Prefect server" 2>/dev/null; then
  echo "Prefect UI: ${PREFECT_API_URL%/api} (already running)"
else
  unset PREFECT_API_URL
  start_prefect_server
  pids+=("$PREFECT_SERVER_PID")
fi
wait_http "http://$MLFLOW_HOST:$MLFLOW_PORT/health" 120 "MLflow server"
echo "MLflow UI:  http://$MLFLOW_HOST:$MLFLOW_PORT"
echo "Prefect UI: ${PREFECT_API_URL%/api}"
echo "Ctrl-C stops both."
wait
