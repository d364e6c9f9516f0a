#!/usr/bin/env bash
# MLflow's UI on the store a sweep (or a run) logged to with output.mlflow, and a screenshot of its runs taken with
# headless chromium:
#   tools/mlflow_screenshot.sh SWEEP_DIR [OUT.png] [PORT]
# It reads the store from SWEEP_DIR/mlflow.json (a SQLite store: output.mlflow: true), starts `mlflow server` on
# 127.0.0.1, waits for it, shoots the sweep's experiment page, and stops the server. MLFLOW (default: mlflow) is the
# server's command, from the full mlflow package (`pip install mlflow`: the UI's pages ship only in it; mlflow-skinny
# with the test extra's flask, flask-cors, aiohttp, pandas and huey serves the REST API alone, and the page says
# "landing page (index.html) not found"); CHROMIUM (default: chromium) the browser. KEEP=1 serves until Ctrl-C.
set -euo pipefail
folder=${1:?usage: tools/mlflow_screenshot.sh SWEEP_DIR [OUT.png] [PORT]}
out=${2:-mlflow.png}
port=${3:-5055}
mlflow=${MLFLOW:-mlflow}
chromium=${CHROMIUM:-chromium}
read -r uri run_id < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["tracking_uri"], r["run_id"])' \
    "$folder/mlflow.json")
case $uri in
    sqlite:* | postgresql*) ;;
    *) echo "$folder/mlflow.json names $uri: that is already a server, open it in a browser" >&2; exit 2 ;;
esac
log=$(mktemp)
setsid $mlflow server --backend-store-uri "$uri" --host 127.0.0.1 --port "$port" --workers 1 >"$log" 2>&1 &
server=$!  # the leader of its own process group: the server, its uvicorn and job workers go together
trap 'kill -TERM -- "-$server" 2>/dev/null || true; rm -f "$log"' EXIT
url=http://127.0.0.1:$port
for _ in $(seq 300); do  # it answers in seconds; a busy machine may take a minute
    curl -fs "$url/health" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { tail -20 "$log" >&2; exit 1; }
    sleep 0.5
done
experiment=$(curl -fs "$url/api/2.0/mlflow/runs/get?run_id=$run_id" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["run"]["info"]["experiment_id"])')
page="$url/#/experiments/$experiment/runs"
echo "MLflow's UI: $page"
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,900 \
    --virtual-time-budget=15000 --screenshot="$out" "$page" >/dev/null 2>&1
echo "screenshot: $out"
if [ "${KEEP:-0}" = 1 ]; then
    echo "serving until Ctrl-C"
    wait "$server"
fi
