"""The loop, closed, on real parts: `kd run` -> `kd serve` -> `kd replay` (clean, then with drift) -> `kd monitor`
reports drift and starts a run of the real retraining deployment -> a process worker executes it -> the new
version is gated and promoted -> the service picks it up without a restart. Clean traffic starts nothing,
and a second breach inside the cooldown starts nothing either."""

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import time

import httpx
import pytest
import yaml
from kdproject import REPO, TINY, make_project

pytestmark = [pytest.mark.flow, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("kd_tests_serve_harness", REPO / "tests" / "serve" / "harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

SHIFTED = [f"f{i}" for i in range(4)]  # four of the six features, far off the training range


@pytest.fixture(scope="module")
def loop(tmp_path_factory, prefect_api):
    from prefect.settings import PREFECT_API_URL

    params = copy.deepcopy(TINY)
    params["data"]["transfer"] = "parquet:data/production"  # where the monitor exports production inputs
    params["monitor"] = {"window_hours": 1, "min_rows": 100, "min_feedback_rows": 30, "cooldown_hours": 6}
    params["serve"] = {"poll_seconds": 1}
    root = make_project(tmp_path_factory.mktemp("loop"), params)
    (root / "data" / "production").mkdir(parents=True)
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for dep in spec["deployments"]:  # the cron schedules stay off: only the monitor may start a run here
        for schedule in dep["schedules"]:
            schedule["active"] = False
    (root / "prefect.yaml").write_text(yaml.safe_dump(spec))
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(root)}

    def run(*cmd, timeout=600, check=True):
        out = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        assert not check or out.returncode == 0, f"{cmd}: {out.stdout[-3000:]}{out.stderr[-3000:]}"
        return out

    run("kd", "run", "--root", str(root), "--no-push")
    run("prefect", "--no-prompt", "work-pool", "create", "kd-process", "--type", "process", "--overwrite")
    run("prefect", "--no-prompt", "deploy", "--name", "nightly")
    _EARLIER.update(r.id for r in _flow_runs())  # runs of other tests on the same Prefect API
    server = harness.Server(root, "--poll-seconds", "1")
    try:
        yield root, run, server
    finally:
        server.stop()


_EARLIER: set = set()


def _flow_runs():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"])))
    return [r for r in runs if r.id not in _EARLIER]


def _monitor(run, root):
    out = run("kd", "monitor", "--root", str(root), "--hours", "1")
    return json.loads((root / "reports/monitor/monitor.json").read_text()), out.stdout


def test_clean_traffic_starts_nothing(loop):
    root, run, server = loop
    out = run("kd", "replay", "--root", str(root), "--url", server.url, "--count", "400", "--feedback", "0.5", "--json")
    assert json.loads(out.stdout)["5xx"] == 0
    result, text = _monitor(run, root)
    gates = {g["name"]: g for g in result["gates"]}
    assert result["rows"] >= 100 and gates["data_drift"]["passed"] and not result["decision"]["triggered"]
    assert "No retraining" in text and _flow_runs() == []


def test_drift_starts_the_retraining_deployment_and_the_service_swaps(loop):
    root, run, server = loop
    shift = [arg for col in SHIFTED for arg in ("--shift", f"{col}=+4")]
    run("kd", "replay", "--root", str(root), "--url", server.url, "--count", "400", "--feedback", "0.5", *shift)
    result, text = _monitor(run, root)
    gates = {g["name"]: g for g in result["gates"]}
    assert not gates["data_drift"]["passed"] and set(SHIFTED) <= set(result["data_drift"]["columns"])
    assert result["disagreement"]["top1"] > result["disagreement_reference"]["top1"]  # the student left its teacher's side
    assert result["decision"]["triggered"] and "data_drift" in result["decision"]["breached"] and "Retraining started" in text
    (flow_run,) = _flow_runs()
    assert flow_run.parameters["reason"].startswith("monitor: ") and "data_drift" in flow_run.parameters["reason"]
    assert any((root / "data/production").glob("inputs-*.parquet")) and (root / "data/production.dvc").exists()

    pid = server.proc.pid
    run("prefect", "--no-prompt", "worker", "start", "--pool", "kd-process", "--run-once", timeout=900)
    (flow_run,) = _flow_runs()
    assert flow_run.state.is_completed(), flow_run.state
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    champion = client.get_model_version_by_alias("kd-student", "champion")
    assert str(champion.version) == "2" and champion.tags["gates.passed"] == "true"
    assert client.get_run(champion.tags["pipeline_run_id"]).data.tags["kd.reason"].startswith("monitor: ")
    swapped = harness.wait_for(lambda: httpx.get(f"{server.url}/health", timeout=5).json().get("model_version") == "2" or None,
                               timeout=120, what="the service to swap to version 2")
    assert swapped and server.proc.pid == pid and server.proc.poll() is None  # no restart
    answer = harness.predict(server.url, [{f"f{i}": 0.1 for i in range(6)} | {"group": "a"}]).json()
    assert answer["model_version"] == "2"


def test_a_second_breach_inside_the_cooldown_starts_nothing(loop):
    root, run, server = loop
    before = len(_flow_runs())
    shift = [arg for col in SHIFTED for arg in ("--shift", f"{col}=+6")]
    run("kd", "replay", "--root", str(root), "--url", server.url, "--count", "300", *shift)
    time.sleep(1)
    result, text = _monitor(run, root)
    assert result["decision"]["breached"] and not result["decision"]["triggered"] and "cooling down" in text
    assert len(_flow_runs()) == before
