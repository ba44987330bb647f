#!/usr/bin/env bash
# `make serve`: a Prefect server on loopback (SQLite under .prefect/) + every paper served as a
# deployment (infra/prefect/deployments.yaml). In another shell:
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   .venv/bin/prefect deployment run 'har/quick' -p config='{"seed": 1}' --watch
source "$(dirname "$0")/common.sh"
cd "$PAPERWORKS_ROOT"
start_prefect_server
trap 'kill "$PREFECT_SERVER_PID" 2>/dev/null || true' EXIT
echo "Prefect UI/API: ${PREFECT_API_URL%/api}   (MLflow UI: make ui)"
echo "run a deployment from another shell:"
echo "  export PREFECT_API_URL=$PREFECT_API_URL"
echo "  $VENV_BIN/prefect deployment run 'har/quick' --watch"
python -m flows serve
