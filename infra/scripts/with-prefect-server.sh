#!/usr/bin/env bash
# Run a command with a Prefect API available: reuse $PREFECT_API_URL if it answers, otherwise start
# a local server (SQLite under .prefect/) on a free port for the duration of the command. Used by
# `make repro` so that the ~20 stage runs share one server instead of each starting Prefect's
# temporary one, and so that the runs stay visible in the Prefect UI (`make ui`) afterwards.
source "$(dirname "$0")/common.sh"
if [ -n "${PREFECT_API_URL:-}" ] && wait_http "$PREFECT_API_URL/health" 2 "Prefect server" 2>/dev/null; then
  exec "$@"
fi
unset PREFECT_API_URL
PREFECT_SERVER_API_PORT=$(free_port) start_prefect_server
trap 'kill "$PREFECT_SERVER_PID" 2>/dev/null || true; wait "$PREFECT_SERVER_PID" 2>/dev/null || true' EXIT
echo "Prefect server for this run: ${PREFECT_API_URL%/api} (stops when the command ends)"
"$@"
