"""The production layout of infra/ as local processes on free loopback ports (docker does not run everywhere):
what tests/flows/test_production.py and benchmarks/production.py start and stop.

  S3          moto in server mode: MLflow's artifact store (bucket kd-mlflow) and the DVC remote (kd-dvc)
  PostgreSQL  the machine's server on 127.0.0.1:5432: two fresh databases, created by infra/init_stores.py
              (the init step of the compose and Kubernetes layouts) and dropped at the end
  MLflow      `mlflow server`: backend store in PostgreSQL, artifacts proxied to s3://kd-mlflow/mlartifacts
  Prefect     `prefect server start` on PostgreSQL

Every process is stopped by its pid (and those it started), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

INFRA = Path(__file__).resolve().parent
PG = "postgresql://postgres@127.0.0.1:5432"
ARTIFACTS, DVC = "kd-mlflow", "kd-dvc"  # the buckets, named as in infra/.env.example
# moto accepts any credentials: these go to the servers and the worker only. A client reaches the
# artifacts through the MLflow server's proxy and needs none (nor does the worker's MLflow client).
AWS = {"AWS_ACCESS_KEY_ID": "kd-test", "AWS_SECRET_ACCESS_KEY": "kd-test-not-a-secret", "AWS_DEFAULT_REGION": "us-east-1"}
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
         "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "ITERATIVE_DO_NOT_TRACK": "1"}


class StackError(RuntimeError):
    """A server did not come up (its log's last lines in the message)."""


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict:
    """This process's environment without any AWS/MLflow/Prefect endpoint it may carry, plus `extra`."""
    drop = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "MLFLOW_TRACKING_URI",
            "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL", "PREFECT_PROFILE")
    return {k: v for k, v in os.environ.items() if k not in drop} | QUIET | extra


class Servers:
    """Processes started here, with their logs; stopped with everything they started."""

    def __init__(self, logs: Path):
        self.logs, self.procs = logs, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict, cwd: Path | None = None) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, name: str, lines: int = 60) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return f"--- last lines of {name}.log ---\n" + "\n".join(text[-lines:])

    def wait_http(self, name: str, url: str, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise StackError(f"{name} exited ({self.procs[name].returncode}) before answering {url}\n{self.tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise StackError(f"{name} did not answer {url} within {timeout:.0f} s\n{self.tail(name)}")

    def stop_all(self) -> None:
        """SIGTERM to each server and every process under it (uvicorn workers, the worker's flow runs, which
        Prefect may start in their own session), SIGKILL to whatever is left after 20 s. By pid only."""
        import psutil

        procs = []
        for proc in reversed(self.procs.values()):
            with contextlib.suppress(psutil.NoSuchProcess):
                top = psutil.Process(proc.pid)
                procs += [top, *top.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)


@contextlib.contextmanager
def production_stack(tmp: Path, prefix: str = "kd_test"):
    """S3, two fresh PostgreSQL databases, the MLflow server and the Prefect server, up and answering; on exit
    every process stopped and both databases dropped. Raises psycopg.OperationalError without PostgreSQL."""
    import psycopg

    admin = psycopg.connect(f"{PG}/postgres", connect_timeout=3, autocommit=True)
    tag = uuid.uuid4().hex[:10]
    dbs = {"mlflow": f"{prefix}_{tag}_mlflow", "prefect": f"{prefix}_{tag}_prefect"}
    ports = {name: port() for name in ("s3", "mlflow", "prefect")}
    s = SimpleNamespace(tmp=tmp, dbs=dbs, s3=f"http://127.0.0.1:{ports['s3']}", mlflow=f"http://127.0.0.1:{ports['mlflow']}",
                        prefect_api=f"http://127.0.0.1:{ports['prefect']}/api", servers=Servers(tmp / "logs"))
    try:
        s.servers.start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])], env())
        s.servers.wait_http("s3", f"{s.s3}/moto-api/", timeout=60)
        init = subprocess.run([sys.executable, str(INFRA / "init_stores.py")], capture_output=True, text=True, timeout=120,
                              env=env(**AWS, KD_PG_ADMIN_URL=f"{PG}/postgres", KD_PG_DATABASES=" ".join(dbs.values()),
                                      KD_S3_ENDPOINT_URL=s.s3, KD_S3_BUCKETS=f"{ARTIFACTS} {DVC}"))
        if init.returncode != 0 or f"created: {' '.join(dbs.values())}" not in init.stdout or f"created: {ARTIFACTS} {DVC}" not in init.stdout:
            raise StackError(f"infra/init_stores.py: {init.stdout}{init.stderr}")

        # kd runs no MLflow server-side jobs: job execution off spares the server its seven job-runner processes
        s.servers.start("mlflow", [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]),
                                   "--workers", "1", "--backend-store-uri", f"{PG}/{dbs['mlflow']}",
                                   "--artifacts-destination", f"s3://{ARTIFACTS}/mlartifacts"],
                        env(**AWS, MLFLOW_S3_ENDPOINT_URL=s.s3, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        # No UI (faster start) and no scheduler: a cron schedule is registered, but its runs are not created.
        s.servers.start("prefect", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])],
                        env(PREFECT_HOME=str(tmp / "prefect-server"), PREFECT_UI_ENABLED="false",
                            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
                            PREFECT_API_DATABASE_CONNECTION_URL=f"{PG.replace('postgresql:', 'postgresql+asyncpg:')}/{dbs['prefect']}"))
        s.servers.wait_http("mlflow", f"{s.mlflow}/health")
        s.servers.wait_http("prefect", f"{s.prefect_api}/health")
        yield s
    finally:
        s.servers.stop_all()
        for db in dbs.values():
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
