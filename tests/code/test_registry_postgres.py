"""The registry adapter against the production layout of infra/: PostgreSQL as the backend store, used
directly and through a real `mlflow server` process. Versions, gate tags, promotion only by `promote`,
rollback. Uses a throwaway database."""

import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest
import torch

from kd.config import RegistryParams
from kd.gates import Gate

PG = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_uri():
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(f"{PG}/test", connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as err:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {err}")
    name = f"kd_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    yield f"{PG}/{name}"

    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
def mlflow_server(pg_uri, tmp_path):
    """`mlflow server` on a free local port, PostgreSQL backend, artifacts proxied to a temp dir."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", pg_uri, "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("through", ["store", "server"])
def test_register_gate_promote_rollback_on_postgres(request, through, tmp_path):
    from kd.registry import Registry, RegistryError

    uri = request.getfixturevalue("pg_uri" if through == "store" else "mlflow_server")
    reg = Registry(RegistryParams(tracking_uri=uri, experiment=f"kd-{uuid.uuid4().hex[:6]}"), tmp_path)
    # artifacts go to a local directory; the backend store (runs, registry) is PostgreSQL
    reg.client.set_experiment_tag(reg.experiment_id(), "purpose", "test")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    versions = []
    for i in range(3):
        with reg.start_run(f"run {i}") as run:
            uri = reg.log_student(model, np.zeros((2, 4), np.float32), [])
            versions.append(reg.register(uri, run.info.run_id, {"accuracy": f"0.9{i}", "dvc.models": f"h{i}"}))
    assert versions == ["1", "2", "3"] and reg.champion() is None
    reg.record_gates("1", [Gate("accuracy", True, 0.9, 0.5)])
    assert reg.promote("1", reason="first", by="test") == {"champion": "1", "previous": None}
    reg.record_gates("2", [Gate("accuracy", False, 0.4, 0.5), Gate("drift", False, 0.7, 0.5, "warn")])
    mv = reg.client.get_model_version(reg.name, "2")
    assert mv.tags["gates.passed"] == "false" and mv.tags["gates.failed"] == "accuracy" and mv.tags["gate.drift"].startswith("warn")
    assert str(reg.champion().version) == "1"  # recording a failure moves nothing
    assert reg.promote("3", reason="by hand", by="test") == {"champion": "3", "previous": "1"}
    with pytest.raises(RegistryError, match="already @champion"):
        reg.promote("3", reason="again", by="test")
    with pytest.raises(RegistryError, match="no version '9'"):
        reg.promote("9", reason="typo", by="test")
    assert reg.rollback("bad deploy") == {"champion": "1", "demoted": "3"}
    assert reg.client.get_model_version(reg.name, "3").tags["rollback_reason"] == "bad deploy"
    with pytest.raises(RegistryError, match="no @previous"):
        reg.rollback("twice")
    assert reg.find_version("dvc.models", "h1") == "2"
    assert "| 1 | champion |" in reg.describe()
    import mlflow.pytorch

    champion = mlflow.pytorch.load_model(f"models:/{reg.name}@champion")
    assert champion(torch.zeros(2, 4)).shape == (2, 3)
