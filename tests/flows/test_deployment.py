"""prefect.yaml declares a valid scheduled deployment, and a run of that deployment executes the flow
(deployed with `prefect deploy`, picked up by a real process worker)."""

import os
import shutil
import subprocess
import time

import pytest
import yaml
from kdproject import REPO, TINY, make_project

pytestmark = pytest.mark.flow


@pytest.mark.parametrize("name, entrypoint_flow, cron", [("nightly", "kd-retrain", "0 3 * * *"), ("hourly", "kd-monitor", "0 * * * *")])
def test_deployment_definition_is_valid(name, entrypoint_flow, cron):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (dep,) = [d for d in spec["deployments"] if d["name"] == name]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        flow = load_flow_from_entrypoint(dep["entrypoint"])
    finally:
        os.chdir(cwd)
    assert flow.name == entrypoint_flow
    schema = parameter_schema(flow.fn)
    assert set(dep["parameters"]) <= set(schema.properties), "deployment parameters must be flow parameters"
    flow.validate_parameters(dep["parameters"])
    (sched,) = dep["schedules"]
    assert CronSchedule(cron=sched["cron"], timezone=sched["timezone"]).cron == cron
    assert dep["work_pool"]["name"] == "kd-process"


def test_a_deployment_run_executes_the_flow(tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    root = make_project(tmp_path / "proj", TINY)
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(root)}

    def prefect(*args, timeout=300):
        out = subprocess.run(["prefect", "--no-prompt", *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    prefect("work-pool", "create", "kd-process", "--type", "process", "--overwrite")
    prefect("deploy", "--name", "nightly")
    out = prefect("deployment", "run", "kd-retrain/nightly")
    assert "Created flow run" in out
    t0 = time.time()
    prefect("worker", "start", "--pool", "kd-process", "--run-once", timeout=600)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"])))
    assert len(runs) >= 1
    run = max(runs, key=lambda r: r.created)
    assert run.state.is_completed(), f"{run.state} after {time.time() - t0:.0f}s"
    assert (root / "mlflow.db").exists() and (root / "reports/publish/published.json").exists()
