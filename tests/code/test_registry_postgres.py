"""The registry adapter against the production layout of infra/: PostgreSQL as the backend store, used
directly and through a real `mlflow server` process. Versions, gate tags, promotion only by `promote`,
rollback. Uses a throwaway database."""

import uuid

import pytest
from mlflow_server import free_port, start_mlflow, stop
from throwaway_pg import pg_database

from kd.config import RegistryParams


@pytest.fixture
def pg_uri():
    with pg_database() as (url, _, _):
        yield url


@pytest.fixture
def mlflow_server(pg_uri, tmp_path):
    """`mlflow server` on a free local port, PostgreSQL backend, artifacts proxied to a temp dir."""
    port = free_port()
    proc = start_mlflow(port, pg_uri, tmp_path / "server-artifacts", tmp_path / "server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.mark.parametrize("through", ["store", "server"])
def test_register_gate_promote_rollback_on_postgres(request, through, tmp_path, tiny_bundle):
    from kd import aliases
    from kd.registry import Registry, RegistryError

    bundle, frame = tiny_bundle
    uri = request.getfixturevalue("pg_uri" if through == "store" else "mlflow_server")
    reg = Registry(RegistryParams(tracking_uri=uri, experiment=f"kd-{uuid.uuid4().hex[:6]}"), tmp_path)
    versions = []
    for i in range(3):
        with reg.start_run(f"run {i}"):
            model_uri = reg.log_predictor(bundle, "student", frame[["x", "colour"]].head(2))
        versions.append(reg.register(model_uri, {"accuracy": f"0.9{i}", "kd.candidate": f"h{i}"}))
    assert versions == ["1", "2", "3"] and reg.version_by_alias("champion") is None
    assert aliases.promote(reg, "1", reason="first", by="test") == {"champion": "1", "previous": None}
    assert aliases.promote(reg, "3", reason="by hand", by="test") == {"champion": "3", "previous": "1"}
    with pytest.raises(RegistryError, match="already @champion"):
        aliases.promote(reg, "3", reason="again", by="test")
    with pytest.raises(RegistryError, match="no version '9'"):
        aliases.promote(reg, "9", reason="typo", by="test")
    assert aliases.rollback(reg, "bad deploy") == {"champion": "1", "previous": None, "demoted": "3"}
    assert reg.version("3").tags["rollback_reason"] == "bad deploy"
    with pytest.raises(RegistryError, match="no @previous"):
        aliases.rollback(reg, "twice")
    assert reg.find_version("kd.candidate", "h1") == "2"
    assert [e["action"] for e in aliases.history(reg)] == ["promote", "promote", "rollback"]
    import mlflow.pyfunc

    champion = mlflow.pyfunc.load_model(f"models:/{reg.name}@champion")
    out = champion.predict(frame[["x", "colour"]].head(5))
    assert list(out.columns) == ["label", "probabilities"] and set(out["label"]) <= {"no", "yes"}
