"""The production layout of infra/ on this machine, with real servers on free loopback ports, started and
stopped by this module (docker does not run here):

  S3          moto in server mode: MLflow's artifact store (bucket kd-mlflow) and the DVC remote (kd-dvc)
  PostgreSQL  the machine's server on 127.0.0.1:5432: two fresh databases, created by infra/init_stores.py
              (the init step of the compose and Kubernetes layouts) and dropped at the end
  MLflow      `mlflow server`: backend store in PostgreSQL, artifacts proxied to s3://kd-mlflow/mlartifacts
  Prefect     `prefect server start` on PostgreSQL, and infra/worker.sh (the work pool, `prefect deploy`,
              a process worker): the script the compose service and the Kubernetes Deployment run

The project runs the same TINY params.yaml as the embedded-default tests (test_deployment.py): only the
environment switches over (MLFLOW_TRACKING_URI, PREFECT_API_URL, the DVC remote). One `prefect deployment
run` of the cron deployment is executed by the worker; then the registry is read over MLflow's REST API,
the buckets with boto3 and both databases with SQL, the champion is loaded through the server, and a
clone pulls the pipeline's outputs back from S3.
"""

import copy
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kdproject import REPO, TINY, make_project, read_params

sys.path.insert(0, str(REPO / "infra"))
from loopback import ARTIFACTS, AWS, DVC, PG, production_stack  # noqa: E402
from loopback import env as _env  # noqa: E402
from loopback import port as _port  # noqa: E402

pytestmark = [pytest.mark.flow, pytest.mark.slow]

# The cached DVC outputs the lineage tags name (data, teacher, soft-target cache, student, export bundle).
PIPELINE = ("data/prepared", "models/teacher", "cache/soft_targets", "models/distilled", "models/export")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _sh(*argv: str, cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run(argv, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(argv)}:\n{out.stdout}{out.stderr}"
    return out.stdout


def _s3(stack):
    import boto3

    return boto3.client("s3", endpoint_url=stack.s3, aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"], region_name=AWS["AWS_DEFAULT_REGION"])


def _keys(stack, bucket: str) -> set[str]:
    pages = _s3(stack).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _get(url: str, **query) -> dict:
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """S3, two PostgreSQL databases, the MLflow server and the Prefect server, up and answering (infra/loopback.py)."""
    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("moto.server")
    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as err:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {err}")
    with production_stack(tmp_path_factory.mktemp("production")) as s:
        yield s


@pytest.fixture(scope="module")
def deployed_run(stack):
    """A kd project with its DVC remote on S3, the nightly deployment run once by infra/worker.sh's worker."""
    s = stack
    root = make_project(s.tmp / "proj", copy.deepcopy(TINY))
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))

    # The remote as a team commits it: bucket and endpoint in .dvc/config, credentials never (env or config.local).
    _sh("dvc", "remote", "add", "-d", "s3", f"s3://{DVC}/dvc", cwd=root)
    _sh("dvc", "remote", "modify", "s3", "endpointurl", s.s3, cwd=root)
    _sh("git", "add", "-A", cwd=root)
    _sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "DVC remote on S3, the deployment", cwd=root)

    worker_port = _port()
    env = _env(**AWS, PREFECT_API_URL=s.prefect_api, MLFLOW_TRACKING_URI=s.mlflow, PYTHONPATH=str(root),
               PREFECT_HOME=str(s.tmp / "prefect-worker"), PREFECT_LOGGING_LEVEL="INFO", PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1", PREFECT_WORKER_WEBSERVER_PORT=str(worker_port))
    s.servers.start("worker", ["bash", str(REPO / "infra/worker.sh")], env, cwd=root)
    s.servers.wait_http("worker", f"http://127.0.0.1:{worker_port}/health", timeout=180)

    out = _sh("prefect", "--no-prompt", "deployment", "run", "kd-retrain/nightly", cwd=root,
              env=_env(PREFECT_API_URL=s.prefect_api, PREFECT_HOME=str(s.tmp / "prefect-cli")))
    (run_id,) = set(re.findall(r"UUID: ([0-9a-f-]{36})", out))
    t0 = time.monotonic()
    while (flow_run := _get(f"{s.prefect_api}/flow_runs/{run_id}"))["state"]["type"] not in TERMINAL:
        if time.monotonic() - t0 > 300:
            pytest.fail(f"flow run {run_id} still {flow_run['state']['type']} after 300 s\n{s.servers.tail('worker')}")
        time.sleep(2)
    assert flow_run["state"]["type"] == "COMPLETED", f"{flow_run['state']}\n{s.servers.tail('worker', 120)}"
    return SimpleNamespace(root=root, flow_run=flow_run, env=env, seconds=time.monotonic() - t0)


def _lock_hashes(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


def test_the_cron_deployment_ran_on_the_worker_with_prefect_state_in_postgres(stack, deployed_run):
    import psycopg

    api, run = stack.prefect_api, deployed_run.flow_run
    dep = _get(f"{api}/deployments/name/kd-retrain/nightly")
    assert run["deployment_id"] == dep["id"] and dep["work_pool_name"] == "kd-process"
    assert [(x["schedule"]["cron"], x["schedule"]["timezone"], x["active"]) for x in dep["schedules"]] == [("0 3 * * *", "UTC", True)]
    # no pull section in prefect.yaml: runs execute in the worker's working copy, where `prefect deploy` ran
    assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(deployed_run.root)}}]
    assert _get(f"{api}/work_pools/kd-process")["type"] == "process"
    with psycopg.connect(f"{PG}/{stack.dbs['prefect']}") as conn:  # the state is Prefect's on PostgreSQL, not a SQLite file
        row = conn.execute("SELECT state_type FROM flow_run WHERE id = %s", (run["id"],)).fetchone()
    assert row == ("COMPLETED",)
    print(f"flow run {run['name']}: {deployed_run.seconds:.0f} s from `prefect deployment run` to COMPLETED")


def test_registry_over_http_champion_lineage_and_teacher(stack, deployed_run):
    import psycopg

    root, api = deployed_run.root, f"{stack.mlflow}/api/2.0/mlflow"
    assert read_params(root) == TINY, "the same params.yaml as the embedded default: no tracking URI in it"
    assert not (root / "mlflow.db").exists(), "MLflow fell back to the project's SQLite file"
    published = json.loads((root / "reports/publish/published.json").read_text())
    assert published["tracking_uri"] == stack.mlflow and published["version"] == "1" and published["promoted"]

    model = _get(f"{api}/registered-models/get", name="kd-student")["registered_model"]
    assert {a["alias"]: a["version"] for a in model.get("aliases", [])} == {"champion": "1"}
    assert _get(f"{api}/registered-models/alias", name="kd-student", alias="champion")["model_version"]["version"] == "1"
    mv = _get(f"{api}/model-versions/get", name="kd-student", version="1")["model_version"]
    tags = {t["key"]: t["value"] for t in mv["tags"]}
    lock = _lock_hashes(root)
    assert {k: tags[k] for k in ("dvc.data", "dvc.teacher", "dvc.soft_targets", "dvc.models", "dvc.export")} == {
        "dvc.data": lock["data/prepared"], "dvc.teacher": lock["models/teacher"], "dvc.soft_targets": lock["cache/soft_targets"],
        "dvc.models": lock["models/distilled"], "dvc.export": lock["models/export"]}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    assert tags["git_commit"] == head and tags["config_hash"] and tags["teacher_hash"]
    assert tags["gates.passed"] == "true" and tags["kd.publish"] == "done" and tags["kd.promoted"] == "true"
    run = _get(f"{api}/runs/get", run_id=tags["pipeline_run_id"])["run"]
    assert run["info"]["status"] == "FINISHED" and {t["key"]: t["value"] for t in run["data"]["tags"]}["kd.candidate"] == f"{tags['dvc.models']}+{tags['dvc.data']}"

    teacher = _get(f"{api}/model-versions/get", name="kd-teacher", version=tags["teacher_version"])["model_version"]
    assert {t["key"]: t["value"] for t in teacher["tags"]}["teacher_hash"] == tags["teacher_hash"]
    with psycopg.connect(f"{PG}/{stack.dbs['mlflow']}") as conn:  # the registry is MLflow's PostgreSQL database
        assert conn.execute("SELECT name, version FROM registered_model_aliases WHERE alias = 'champion'").fetchall() == [("kd-student", 1)]


def test_model_artifacts_are_in_the_s3_bucket(stack, deployed_run):
    api = f"{stack.mlflow}/api/2.0/mlflow"
    keys = _keys(stack, ARTIFACTS)
    for name in ("kd-student", "kd-teacher"):
        mv = _get(f"{api}/model-versions/get", name=name, version="1")["model_version"]
        model_id = mv["source"].removeprefix("models:/")
        location = _get(f"{api}/logged-models/{model_id}")["model"]["info"]["artifact_uri"]
        assert location.startswith("mlflow-artifacts:/"), location  # served by the tracking server's proxy
        prefix = "mlartifacts/" + location.removeprefix("mlflow-artifacts:/").strip("/") + "/"
        files = {k.removeprefix(prefix) for k in keys if k.startswith(prefix)}
        assert {"MLmodel", "data/predictor.json"} <= {re.sub(r"^data/[^/]+/", "data/", f) for f in files}, sorted(files)[:20]
    run_id = _get(f"{api}/model-versions/get", name="kd-student", version="1")["model_version"]["run_id"]
    assert any(k.endswith(f"{run_id}/artifacts/gates.json") for k in keys)


def test_the_champion_loads_through_the_server_and_predicts_raw_rows(stack, deployed_run, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow.tracking._model_registry import utils as registry_uri
    from mlflow.tracking._tracking_service import utils as tracking_uri

    root = deployed_run.root
    test = pd.read_parquet(root / "data/prepared/raw/test.parquet")
    label = json.loads((root / "data/prepared/meta.json").read_text())["label_column"]
    # set_tracking_uri also exports MLFLOW_TRACKING_URI: restore the variables and MLflow's globals afterwards,
    # or later tests' subprocesses would inherit this server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", stack.mlflow)
    monkeypatch.setattr(tracking_uri, "_tracking_uri", None)
    monkeypatch.setattr(registry_uri, "_registry_uri", None)
    mlflow.set_tracking_uri(stack.mlflow)
    mlflow.set_registry_uri(stack.mlflow)
    champion = mlflow.pyfunc.load_model("models:/kd-student@champion")
    out = champion.predict(test.drop(columns=[label]))
    assert list(out.columns) == ["label", "probabilities"] and len(out) == len(test)
    accuracy = float((out["label"].astype(str) == test[label].astype(str)).mean())
    reported = json.loads((root / "reports/evaluate/metrics.json").read_text())["student"]["accuracy"]
    assert abs(accuracy - reported) <= 2 / len(test), (accuracy, reported)


def test_dvc_pushed_to_s3_and_a_fresh_clone_pulls_it_back(stack, deployed_run):
    root = deployed_run.root
    keys = _keys(stack, DVC)
    lock = _lock_hashes(root)
    for path in PIPELINE:
        md5 = lock[path]  # a directory: its listing and every file in it (DVC 3 layout: files/md5/ab/cdef...)
        listing = json.loads((root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_text())
        for h in [md5, *(f["md5"] for f in listing)]:
            assert f"dvc/files/md5/{h[:2]}/{h[2:]}" in keys, f"{path} ({h}) was not pushed"
    assert "secret" not in (root / ".dvc/config").read_text()

    # a fresh clone of the project as committed after the run (the run's dvc.lock), credentials in its config.local
    _sh("git", "add", "dvc.lock", cwd=root)
    _sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the nightly run's dvc.lock", cwd=root)
    clone = stack.tmp / "clone"
    _sh("git", "clone", "-q", str(root), str(clone), cwd=stack.tmp)
    assert not (clone / "models").exists() and not (clone / ".dvc/cache").exists()
    _sh("dvc", "remote", "modify", "--local", "s3", "access_key_id", AWS["AWS_ACCESS_KEY_ID"], cwd=clone)
    _sh("dvc", "remote", "modify", "--local", "s3", "secret_access_key", AWS["AWS_SECRET_ACCESS_KEY"], cwd=clone)
    _sh("dvc", "pull", cwd=clone)
    for path in PIPELINE:  # the cached outputs, byte for byte (reports and params.resolved.yaml are cache: false)
        files = {f.relative_to(root / path): f.read_bytes() for f in (root / path).rglob("*") if f.is_file()}
        assert files and {f.relative_to(clone / path): f.read_bytes() for f in (clone / path).rglob("*") if f.is_file()} == files, path
