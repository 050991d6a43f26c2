#!/usr/bin/env bash
# Production servers for kd on one host, without containers:
#   PostgreSQL (backend store of MLflow and database of Prefect) must already run;
#   MLflow tracking + registry server on :5000, artifacts under $KD_ARTIFACTS;
#   Prefect API + UI on :4200; a process worker on the kd-process pool.
# Usage: infra/servers.sh start|stop   (env: KD_PG, KD_ARTIFACTS, KD_LOGS)
set -euo pipefail
PG=${KD_PG:-postgresql://postgres@127.0.0.1:5432}
ARTIFACTS=${KD_ARTIFACTS:-/var/lib/kd/mlartifacts}
LOGS=${KD_LOGS:-/var/log/kd}
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1

case "${1:-}" in
  start)
    mkdir -p "$ARTIFACTS" "$LOGS"
    for db in kd_mlflow kd_prefect; do
      psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 || psql "$PG/postgres" -c "CREATE DATABASE $db"
    done
    nohup mlflow server --host 127.0.0.1 --port 5000 \
      --backend-store-uri "$PG/kd_mlflow" --artifacts-destination "$ARTIFACTS" \
      > "$LOGS/mlflow.log" 2>&1 & echo $! > "$LOGS/mlflow.pid"
    PREFECT_API_DATABASE_CONNECTION_URL="${PG/postgresql:/postgresql+asyncpg:}/kd_prefect" \
      nohup prefect server start --host 127.0.0.1 --port 4200 > "$LOGS/prefect.log" 2>&1 & echo $! > "$LOGS/prefect.pid"
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    for _ in $(seq 60); do curl -fs "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
    prefect work-pool create kd-process --type process --overwrite >/dev/null
    nohup prefect worker start --pool kd-process > "$LOGS/worker.log" 2>&1 & echo $! > "$LOGS/worker.pid"
    echo "MLflow  http://127.0.0.1:5000   (set registry.tracking_uri: http://127.0.0.1:5000)"
    echo "Prefect http://127.0.0.1:4200   (export PREFECT_API_URL=$PREFECT_API_URL; prefect deploy --all)"
    ;;
  stop)
    for name in worker prefect mlflow; do
      [ -f "$LOGS/$name.pid" ] || continue
      pid=$(cat "$LOGS/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 15); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -9 "$pid" 2>/dev/null || true   # still there after 15 s
      rm -f "$LOGS/$name.pid"
    done
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
