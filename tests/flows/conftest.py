"""A throwaway kd project (dvc.yaml, params.yaml, kd sources for DVC's code deps, git + DVC) per test module,
and Prefect's test harness (a temporary API with its own database)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# A tiny, fast configuration: synthetic data with a sensitive attribute and an unlabeled transfer set.
TINY = {
    "seed": 0,
    "data": {"source": "synthetic", "sensitive_columns": ["group"],
             "synthetic": {"n_samples": 900, "n_features": 6, "n_classes": 3, "class_sep": 2.5, "n_transfer": 200}},
    "validate": {"min_group_size": 20},
    "teacher": {"model": {"arch": "mlp", "width": 32, "depth": 2}, "train": {"epochs": 4}},
    "student": {"model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 3}},
    "evaluate": {"latency_runs": 10, "warmup_runs": 2},
    "checks": {"fairness": {"max_disparity": 1.0, "max_amplification": 1.0}, "calibration": {"max_ece": 1.0}},
    "gates": {"min_accuracy": 0.5, "min_retention": 0.5, "max_champion_drop": 1.0},
    "registry": {"model_name": "kd-student"},
}


def make_project(root: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "kd", root / "kd", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root, full(params))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    subprocess.run(["dvc", "remote", "add", "-d", "local", str(root / "dvc-remote")], cwd=root, check=True, capture_output=True)
    (root / ".gitignore").write_text("/data/\n/models/\n/cache/\n/reports/\n/checkpoints/\n/mlflow.db\n/mlartifacts/\n/dvc-remote/\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=root, check=True)
    return root


def full(params: dict) -> dict:
    """Every section spelled out (DVC needs each key a stage lists), with the repository's paths."""
    from kd.config import Params

    return Params.model_validate(params).to_dict() | {"paths": yaml.safe_load((REPO / "params.yaml").read_text())["paths"]}


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
