#!/usr/bin/env bash
# The kd Prefect worker: what the compose service `prefect-worker` and the Kubernetes Deployment
# `kd-prefect-worker` run, and what tests/flows/test_production.py starts against real servers.
#   1. the project working copy, $KD_PROJECT_DIR (default: the current directory). On an empty volume it
#      is cloned from $KD_PROJECT_REPO (default /opt/kd, the copy baked into the image). Scheduled runs
#      keep their DVC cache, dvc.lock and publish record there, so it must persist between runs.
#   2. the DVC remote: with KD_DVC_REMOTE_URL set (s3://bucket/prefix), it becomes the default remote
#      `s3` in .dvc/config.local, with KD_DVC_ENDPOINT_URL as its endpoint (MinIO & co.); without it
#      the project's committed remote is used. Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
#   3. the work pool `kd-process` and the deployments of prefect.yaml (both idempotent), then the
#      worker in the foreground, with a health endpoint (PREFECT_WORKER_WEBSERVER_HOST/PORT, /health).
# Flow runs inherit this environment: MLFLOW_TRACKING_URI, KD_* and AWS_* reach every stage.
set -euo pipefail
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server API, e.g. http://prefect-server:4200/api}"
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 GX_ANALYTICS_ENABLED=false
POOL=kd-process   # the work_pool of prefect.yaml

dir=${KD_PROJECT_DIR:-$PWD}
if [ ! -e "$dir/dvc.yaml" ]; then
  repo=${KD_PROJECT_REPO:-/opt/kd}
  echo "worker: no project in $dir: cloning $repo"
  git clone --quiet "$repo" "$dir"
fi
cd "$dir"
if [ -n "${KD_DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --default --force s3 "$KD_DVC_REMOTE_URL"
  if [ -n "${KD_DVC_ENDPOINT_URL:-}" ]; then dvc remote modify --local s3 endpointurl "$KD_DVC_ENDPOINT_URL"; fi
fi

for _ in $(seq "${KD_WAIT_SECONDS:-120}"); do
  python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' "$PREFECT_API_URL" 2>/dev/null && break
  sleep 1
done
prefect --no-prompt work-pool create "$POOL" --type process --overwrite
prefect --no-prompt deploy --all
exec prefect worker start --pool "$POOL" --with-healthcheck
