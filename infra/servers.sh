#!/usr/bin/env bash
# Production servers for kd on one host, without containers (infra/docker-compose.yml: the same parts in containers).
#   PostgreSQL must already run: the databases kd_mlflow, kd_prefect and kd_inference are created if missing
#   (infra/init_stores.py); MLflow tracking + registry on :5000, artifacts in $KD_ARTIFACTS: a directory, or
#   s3://bucket/prefix (bucket created if missing) with MLFLOW_S3_ENDPOINT_URL for an S3-compatible server and
#   the AWS_* credentials in the environment; Prefect API + UI on :4200; a process worker on the kd-process
#   pool (infra/worker.sh: registers the pool and the deployments of $KD_PROJECT_DIR/prefect.yaml).
# Usage: infra/servers.sh start|stop
#   env: KD_PG, KD_ARTIFACTS, KD_LOGS, KD_PROJECT_DIR (default: this checkout), MLFLOW_S3_ENDPOINT_URL, AWS_*
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PG=${KD_PG:-postgresql://postgres@127.0.0.1:5432}
ARTIFACTS=${KD_ARTIFACTS:-/var/lib/kd/mlartifacts}
LOGS=${KD_LOGS:-/var/log/kd}
export KD_PROJECT_DIR=${KD_PROJECT_DIR:-$(dirname "$HERE")}
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false   # kd uses no MLflow server-side jobs: no job-runner processes

case "${1:-}" in
  start)
    mkdir -p "$LOGS"
    buckets=""
    case "$ARTIFACTS" in
      s3://*) buckets=$(echo "${ARTIFACTS#s3://}" | cut -d/ -f1) ;;
      *) mkdir -p "$ARTIFACTS" ;;
    esac
    KD_PG_ADMIN_URL="$PG/postgres" KD_S3_BUCKETS="$buckets" KD_S3_ENDPOINT_URL="${MLFLOW_S3_ENDPOINT_URL:-}" \
      python "$HERE/init_stores.py"
    nohup mlflow server --host 127.0.0.1 --port 5000 --workers 2 \
      --backend-store-uri "$PG/kd_mlflow" --artifacts-destination "$ARTIFACTS" \
      > "$LOGS/mlflow.log" 2>&1 & echo $! > "$LOGS/mlflow.pid"
    PREFECT_API_DATABASE_CONNECTION_URL="${PG/postgresql:/postgresql+asyncpg:}/kd_prefect" \
      nohup prefect server start --host 127.0.0.1 --port 4200 > "$LOGS/prefect.log" 2>&1 & echo $! > "$LOGS/prefect.pid"
    export PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=http://127.0.0.1:5000
    for _ in $(seq 60); do curl -fs "$MLFLOW_TRACKING_URI/health" >/dev/null && break; sleep 1; done
    # the worker waits for the Prefect API, registers the pool and the deployments, then runs flow runs
    # with this environment: MLFLOW_TRACKING_URI (and the AWS_* credentials of the DVC remote) reach every stage
    PYTHONPATH="$KD_PROJECT_DIR" nohup "$HERE/worker.sh" > "$LOGS/worker.log" 2>&1 & echo $! > "$LOGS/worker.pid"
    echo "MLflow  $MLFLOW_TRACKING_URI   (export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI)"
    echo "Prefect http://127.0.0.1:4200   (export PREFECT_API_URL=$PREFECT_API_URL; prefect deployment run kd-retrain/nightly)"
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
