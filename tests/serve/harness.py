"""What the serving tests stand on: a real project with a real SQLite MLflow registry holding real bundles, a
`kd serve` started as a real process on a free loopback port, and throwaway PostgreSQL databases."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from kd_serve import REPO, Server, env, free_port  # noqa: F401  (re-exported for the serving tests)
from throwaway_pg import pg_database  # noqa: F401  (the serving tests' PostgreSQL log)


def _code_conftest():
    spec = importlib.util.spec_from_file_location("kd_tests_code_bundles", REPO / "tests" / "code" / "bundles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_serving_bundle(path: Path, seed: int) -> tuple[Path, pd.DataFrame]:
    """tests/code's tiny bundle (x number, colour red/blue, classes no/yes) with a sensitive column `group` (a/b)."""
    path, frame = _code_conftest().make_bundle(path, seed)
    frame = frame.assign(group=np.random.default_rng(seed + 100).choice(["a", "b"], len(frame)))
    meta = json.loads((path / "predictor.json").read_text())
    meta["sensitive"] = ["group"]
    (path / "predictor.json").write_text(json.dumps(meta))
    frame.assign(__prediction="no", __confidence=0.5).to_parquet(path / "reference.parquet", index=False)
    return path, frame


def new_project(root: Path, bundles: list[tuple[Path, pd.DataFrame]], champion: str = "1", experiment: str | None = None) -> Path:
    """A project whose registry holds one version per bundle (1, 2, …) with `champion` promoted, a params.yaml
    and the held-out split `kd replay` reads by default."""
    from kd import aliases

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"label_column": "label", "sensitive_columns": ["group"]},
                                                      "registry": {"tracking_uri": tracking_uri(root)}}))
    reg = registry(root, experiment or f"serve-{uuid.uuid4().hex[:6]}")
    for i, (bundle, frame) in enumerate(bundles):
        with reg.start_run(f"student {i}"):
            uri = reg.log_predictor(bundle, "student", frame[["x", "colour"]].head(2))
        reg.register(uri, {"kd.candidate": f"candidate-{i}", "git_commit": f"commit-{i}", "dvc.data": f"md5-{i}"})
    aliases.promote(reg, champion, reason="tests", by="tests")
    raw = root / "data" / "prepared" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    bundles[0][1].to_parquet(raw / "test.parquet", index=False)
    return root


def tracking_uri(root: Path) -> str:
    """The project's own registry, named explicitly: mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI, which
    RegistryParams would otherwise prefer — and one test's registry would leak into the next."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def registry(root: Path, experiment: str = "kd"):
    from kd.config import RegistryParams
    from kd.registry import Registry

    return Registry(RegistryParams(tracking_uri=tracking_uri(root), experiment=experiment), root)


def cut_off(admin, name: str) -> None:
    """A real outage of database `name`: new connections are refused and the open ones are terminated."""
    admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def restore(admin, name: str) -> None:
    admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


def predict(url: str, rows: list[dict], client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(f"{url}/predict", json={"rows": rows}, timeout=30)


def wait_for(check, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:  # (a frame has no truth value)
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")
