"""infra/ holds together without docker or a cluster: the compose stack and the Kubernetes manifests
describe the same parts, wired the way kd and its scripts read them (service names, ports, variable
names, databases, buckets, the work pool), every setting is in an example file, and no secret is written
down. tests/flows/test_production.py runs the same scripts (init_stores.py, worker.sh) against real servers."""

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PARTS = {"postgres", "s3", "init", "mlflow", "prefect-server", "prefect-worker", "kd-serve"}
COMPOSE_NAMES = {"s3": "minio"}  # compose service names that differ from the part's name
LONG_RUNNING = PARTS - {"init"}
# The variables kd's own code and scripts read (anything else named KD_* in infra/ is a typo).
KD_VARS = {"KD_PG_ADMIN_URL", "KD_PG_DATABASES", "KD_S3_BUCKETS", "KD_S3_ENDPOINT_URL", "KD_INIT_TIMEOUT",  # init_stores.py
           "KD_PROJECT_DIR", "KD_PROJECT_REPO", "KD_DVC_REMOTE_URL", "KD_DVC_ENDPOINT_URL", "KD_WAIT_SECONDS",  # worker.sh
           "KD_SERVE_LOG_URI"}  # kd serve's prediction log (SQLAlchemy URL), documented in infra/README.md
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN", re.I)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines() if line and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def _service(compose, part):
    return compose["services"][COMPOSE_NAMES.get(part, part)]


def _default(text: str) -> str:
    """Compose interpolation with each ${VAR:-default} replaced by its default (${VAR} and ${VAR:?..} by VAR)."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", text)
    return re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", r"\1", text)


def _command(service) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def _flag(command: str, name: str) -> str:
    (value,) = re.findall(rf"{name}[= ](\S+)", command)
    return _default(value)


def test_compose_has_every_part_with_healthchecks_named_volumes_and_one_image(compose):
    assert set(compose["services"]) == {COMPOSE_NAMES.get(p, p) for p in PARTS}
    for part in LONG_RUNNING:
        svc = _service(compose, part)
        assert "test" in svc.get("healthcheck", {}), f"{part} has no healthcheck"
        assert svc.get("restart") == "unless-stopped", part
    assert _service(compose, "init")["restart"] == "no"
    used = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert used == set(compose["volumes"]), "every volume is named and declared"
    kd = [s for s in compose["services"].values() if "build" in s]
    assert {_default(s["image"]) for s in kd} == {"kd:0.1.0"} and len(kd) == 5
    assert all(s["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"} for s in kd)
    for svc in compose["services"].values():  # images pinned
        assert not _default(svc["image"]).endswith(":latest") and ":" in _default(svc["image"])
    # start order: the stores are healthy, then init has run, then the servers, then the worker
    assert set(_service(compose, "init")["depends_on"]) == {"postgres", "minio"}
    for part in ("mlflow", "prefect-server"):
        assert _service(compose, part)["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert set(_service(compose, "prefect-worker")["depends_on"]) == {"prefect-server", "mlflow"}


def test_compose_wiring_matches_what_kd_and_the_scripts_read(compose, monkeypatch):
    from kd.config import RegistryParams

    env = {p: {k: _default(str(v)) for k, v in _service(compose, p).get("environment", {}).items()} for p in PARTS}
    init = env["init"]
    databases, buckets = set(init["KD_PG_DATABASES"].split()), set(init["KD_S3_BUCKETS"].split())
    mlflow_cmd = _command(_service(compose, "mlflow"))

    # MLflow: backend store in an init'ed database, artifacts in an init'ed bucket through the S3 service
    assert urlparse(_flag(mlflow_cmd, "--backend-store-uri")).path.strip("/") in databases
    artifacts = urlparse(_flag(mlflow_cmd, "--artifacts-destination"))
    assert artifacts.scheme == "s3" and artifacts.netloc in buckets
    assert urlparse(env["mlflow"]["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio" == urlparse(init["KD_S3_ENDPOINT_URL"]).hostname
    assert env["mlflow"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"

    # the worker and kd serve reach MLflow by a name the server accepts, on the port it listens on
    port = _flag(mlflow_cmd, "--port")
    allowed = env["mlflow"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for client in ("prefect-worker", "kd-serve"):
        uri = env[client]["MLFLOW_TRACKING_URI"]
        assert uri == f"http://mlflow:{port}" and f"mlflow:{port}" in allowed
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert RegistryParams().uri("/srv/kd") == uri, "kd reads the registry from MLFLOW_TRACKING_URI"

    # Prefect: the server on its own database, the worker on its API
    prefect_db = urlparse(env["prefect-server"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert prefect_db.scheme == "postgresql+asyncpg" and prefect_db.path.strip("/") in databases
    prefect_port = re.findall(r"--port (\d+)", _command(_service(compose, "prefect-server")))[0]
    assert env["prefect-worker"]["PREFECT_API_URL"] == f"http://prefect-server:{prefect_port}/api"

    # the worker: infra/worker.sh, the DVC remote in an init'ed bucket, its working copy on a volume
    worker = _service(compose, "prefect-worker")
    assert _command(worker) == "bash /opt/kd/infra/worker.sh"
    assert urlparse(env["prefect-worker"]["KD_DVC_REMOTE_URL"]).netloc in buckets
    assert any(env["prefect-worker"]["KD_PROJECT_DIR"].startswith(v.split(":")[1] + "/") for v in worker["volumes"])
    assert env["prefect-worker"]["PYTHONPATH"] == env["prefect-worker"]["KD_PROJECT_DIR"]

    # kd serve: the command the issue names, its prediction log in an init'ed database
    assert _command(_service(compose, "kd-serve")) == "kd serve --host 0.0.0.0 --port 8000"
    log = urlparse(env["kd-serve"]["KD_SERVE_LOG_URI"])
    assert log.scheme == "postgresql+psycopg" and log.path.strip("/") in databases
    assert "AWS_SECRET_ACCESS_KEY" not in env["kd-serve"], "serving reads artifacts through the MLflow server"

    # every KD_* variable set is one kd or its scripts read
    assert {k for e in env.values() for k in e if k.startswith("KD_")} <= KD_VARS


def test_every_compose_variable_is_in_env_example_and_no_secret_is_written(compose, env_example):
    text = re.sub(r"(^|\s)#.*$", "", (INFRA / "docker-compose.yml").read_text(), flags=re.M)  # comments out
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used == set(env_example), f"only in compose: {used - set(env_example)}; only in .env.example: {set(env_example) - used}"
    for key, value in env_example.items():
        if SECRET.search(key):
            assert value == "", f".env.example sets {key}"
    for key, value in (re.findall(r"^\s*(\w+):\s*(\S+)", text, re.M)):
        if SECRET.search(key):
            assert value.startswith("${"), f"docker-compose.yml writes {key} down"


def test_the_worker_script_registers_the_pool_prefect_yaml_names():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    script = (INFRA / "worker.sh").read_text()
    assert pools == set(re.findall(r"^POOL=(\S+)", script, re.M))
    assert "prefect --no-prompt deploy --all" in script and 'prefect worker start --pool "$POOL" --with-healthcheck' in script
    for name in ("worker.sh", "servers.sh"):
        assert subprocess.run(["bash", "-n", str(INFRA / name)]).returncode == 0, name
    used = set(re.findall(r"\b(KD_\w+)", script)) | set(re.findall(r"\b(KD_\w+)", (INFRA / "init_stores.py").read_text()))
    assert used <= KD_VARS


def test_dockerfile_installs_the_s3_extra_and_copies_what_exists():
    docker = (INFRA / "Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '".[s3]"' in docker and re.search(r"^s3 = \[", pyproject, re.M)
    for src in re.findall(r"^COPY (\S+) ", docker, re.M):
        assert (REPO / src).exists(), src
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {"infra/.env", "infra/k8s/secrets.env", ".dvc/config.local", "mlflow.db"} <= set(ignored)


# --------------------------------------------------------------------------- Kubernetes

@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    kust = yaml.safe_load((INFRA / "k8s/kustomization.yaml").read_text())
    docs = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((INFRA / "k8s" / name).read_text()) if d]
    return docs


def _kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _containers(workload, init=True):
    spec = workload["spec"]["template"]["spec"]
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def test_k8s_has_every_long_running_part_with_probes_and_services(manifests):
    workloads = _kind(manifests, "Deployment") | _kind(manifests, "StatefulSet")
    assert set(workloads) == {f"kd-{p}" if not p.startswith("kd-") else p for p in LONG_RUNNING}
    for name, w in workloads.items():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for c in _containers(w, init=False):
            assert "readinessProbe" in c and "livenessProbe" in c, f"{name}/{c['name']}"
            assert "memory" in c["resources"]["limits"], f"{name}/{c['name']}"
        for c in _containers(w):
            assert c["image"] == "kd" or (":" in c["image"] and not c["image"].endswith(":latest")), c["image"]
    services = _kind(manifests, "Service")
    for name, svc in services.items():  # each Service selects a workload and targets a port it exposes
        (w,) = [w for w in workloads.values() if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        exposed = {p["containerPort"] for c in _containers(w, init=False) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= exposed, name
    assert set(services) == set(workloads) - {"kd-prefect-worker"}
    # the stores are created by init containers before the servers that need them start
    for name in ("kd-mlflow", "kd-prefect-server", "kd-serve"):
        (init,) = workloads[name]["spec"]["template"]["spec"]["initContainers"]
        assert init["command"] == ["python", "/opt/kd/infra/init_stores.py"]
        dbs = {e["name"]: e.get("value", "") for e in init["env"]}["KD_PG_DATABASES"].split()
        (main,) = _containers(workloads[name], init=False)
        urls = [a for a in main["command"] if "@kd-postgres" in a] + [e["value"] for e in main["env"] if "@kd-postgres" in e.get("value", "")]
        assert urls and {urlparse(u.split("=", 1)[-1]).path.strip("/") for u in urls} <= set(dbs), name


def test_k8s_references_resolve_and_hold_no_secret(manifests):
    config = _kind(manifests, "ConfigMap")["kd-config"]["data"]
    secret_keys = {line.split("=")[0] for line in (INFRA / "k8s/secrets.env.example").read_text().splitlines()
                   if line and not line.startswith("#")}
    assert all(line.endswith("=") or not SECRET.search(line) for line in (INFRA / "k8s/secrets.env.example").read_text().splitlines()
               if line and not line.startswith("#")), "secrets.env.example holds a value"
    assert not any(SECRET.search(k) for k in config), "a secret in the ConfigMap"
    assert not _kind(manifests, "Secret"), "Secrets are created from secrets.env, never committed"
    workloads = _kind(manifests, "Deployment") | _kind(manifests, "StatefulSet")
    mlflow_port = None
    for name, w in workloads.items():
        for c in _containers(w):
            defined = set(config) if c.get("envFrom") else set()
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == "kd-secrets" and ref["secretKeyRef"]["key"] in secret_keys, e
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config, e
                if "value" in e:
                    assert not SECRET.search(e["name"]), f"{name}: {e['name']} written down"
                    missing = set(re.findall(r"\$\((\w+)\)", e["value"])) - defined
                    assert not missing, f"{name}/{c['name']}: {e['name']} uses {missing} before they are defined"
                defined.add(e["name"])
            missing = {v for arg in c.get("command", []) + c.get("args", []) for v in re.findall(r"\$\((\w+)\)", arg)} - defined
            assert not missing, f"{name}/{c['name']}: command uses undefined {missing}"
            assert {e["name"] for e in c.get("env", []) if e["name"].startswith("KD_")} <= KD_VARS
            if c["name"] == "mlflow":
                mlflow_port = _flag(" ".join(c["command"]), "--port")
                allowed = {e["name"]: e.get("value") for e in c["env"]}["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert config["MLFLOW_TRACKING_URI"] == f"http://kd-mlflow:{mlflow_port}" and f"kd-mlflow:{mlflow_port}" in allowed
    worker = {e["name"]: e.get("value") for e in _containers(workloads["kd-prefect-worker"])[0]["env"]}
    assert worker["PREFECT_API_URL"] == "http://kd-prefect-server:4200/api"
    assert _containers(workloads["kd-serve"], init=False)[0]["command"] == ["kd", "serve", "--host", "0.0.0.0", "--port", "8000"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_the_manifests():
    out = subprocess.run(["kubectl", "kustomize", str(INFRA / "k8s")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["metadata"].get("namespace") for d in docs} == {"kd"}
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet") for c in _containers(d)}
    assert "kd:0.1.0" in images and "kd" not in images
