"""Create kd's PostgreSQL databases and S3 buckets if they are missing; safe to run any number of times.

The init step of every layout in infra/ (the docker-compose service `init`, the `init-stores` init
containers of the Kubernetes pods, `servers.sh start`) and of tests/flows/test_production.py. It waits
for the stores to accept connections (up to KD_INIT_TIMEOUT seconds), then creates only what is absent,
so a restart keeps the data and two init steps at once do not fail.

Environment:
  KD_PG_ADMIN_URL     a role allowed to CREATE DATABASE, on its maintenance database,
                      e.g. postgresql://kd:PASSWORD@postgres:5432/postgres
  KD_PG_DATABASES     space-separated database names (default: kd_mlflow kd_prefect kd_inference)
  KD_S3_BUCKETS       space-separated bucket names (default: kd-mlflow kd-dvc); empty: no S3 step
  KD_S3_ENDPOINT_URL  the S3-compatible server (empty: AWS S3 itself); credentials are boto3's usual
                      AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION
  KD_INIT_TIMEOUT     seconds to wait for the stores (default 60)
"""

from __future__ import annotations

import os
import re
import sys
import time

NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # database names are interpolated into SQL: refuse anything else


def _retry(what: str, attempt, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Exception as err:  # noqa: BLE001 - any connection failure: wait and try again, then report it
            if time.monotonic() > deadline:
                sys.exit(f"init_stores: {what} not reachable after {timeout:.0f} s: {type(err).__name__}: {err}")
            time.sleep(1)


def databases(admin_url: str, names: list[str], timeout: float) -> list[str]:
    """Create each database that does not exist yet; returns the ones created."""
    import psycopg

    bad = [n for n in names if not NAME.match(n)]
    if bad:
        sys.exit(f"init_stores: database names must match {NAME.pattern}; got {bad}")
    conn = _retry("PostgreSQL", lambda: psycopg.connect(admin_url, connect_timeout=3, autocommit=True), timeout)
    created = []
    with conn:
        for name in names:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                try:
                    conn.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
                except psycopg.errors.DuplicateDatabase:  # another init step (a second pod) was faster
                    pass
    return created


def buckets(endpoint_url: str | None, names: list[str], timeout: float) -> list[str]:
    """Create each bucket that does not exist yet; returns the ones created."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url or None)
    existing = {b["Name"] for b in _retry(f"S3 at {endpoint_url or 'AWS'}", lambda: s3.list_buckets()["Buckets"], timeout)}
    created = []
    for name in names:
        if name not in existing:
            try:
                s3.create_bucket(Bucket=name)
                created.append(name)
            except s3.exceptions.BucketAlreadyOwnedByYou:  # another init step was faster
                pass
    return created


def main() -> None:
    env = os.environ.get
    timeout = float(env("KD_INIT_TIMEOUT", "60"))
    admin = env("KD_PG_ADMIN_URL", "")
    if admin:
        names = env("KD_PG_DATABASES", "kd_mlflow kd_prefect kd_inference").split()
        created = databases(admin, names, timeout)
        print(f"init_stores: databases {' '.join(names)} ready (created: {' '.join(created) or 'none'})")
    names = env("KD_S3_BUCKETS", "kd-mlflow kd-dvc").split()
    if names:
        created = buckets(env("KD_S3_ENDPOINT_URL", ""), names, timeout)
        print(f"init_stores: buckets {' '.join(names)} ready (created: {' '.join(created) or 'none'})")


if __name__ == "__main__":
    main()
