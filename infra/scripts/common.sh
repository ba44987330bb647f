# Shared helpers for infra/scripts/*.sh (sourced, not executed).
set -euo pipefail
PAPERWORKS_ROOT=${PAPERWORKS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export PAPERWORKS_ROOT
VENV_BIN=${VENV_BIN:-$PAPERWORKS_ROOT/.venv/bin}
export PATH="$VENV_BIN:$PATH"

load_env() {  # export every KEY=VALUE of an env file, expanding ${VAR:-default}
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    eval "export $line"
  done < "$1"
}

wait_http() {  # wait_http URL SECONDS NAME
  local url=$1 secs=$2 name=$3 i
  for ((i = 0; i < secs * 2; i++)); do
    if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "error: $name did not answer at $url within ${secs}s" >&2
  return 1
}

free_port() {
  python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_prefect_server() {  # starts in the background; sets PREFECT_SERVER_PID and PREFECT_API_URL
  load_env "$PAPERWORKS_ROOT/infra/prefect/server.env"
  mkdir -p "$PREFECT_HOME"
  local log="$PREFECT_HOME/server.log"
  prefect server start --host "$PREFECT_SERVER_API_HOST" --port "$PREFECT_SERVER_API_PORT" >"$log" 2>&1 &
  PREFECT_SERVER_PID=$!
  export PREFECT_API_URL="http://$PREFECT_SERVER_API_HOST:$PREFECT_SERVER_API_PORT/api"
  if ! wait_http "$PREFECT_API_URL/health" 120 "Prefect server"; then
    tail -20 "$log" >&2
    kill "$PREFECT_SERVER_PID" 2>/dev/null || true
    return 1
  fi
}
