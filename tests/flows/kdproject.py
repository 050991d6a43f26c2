"""A throwaway kd project: dvc.yaml, a minimal params.yaml, kd sources for DVC's code deps, git + DVC."""

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

# A tiny, fast configuration: synthetic data with a sensitive attribute and an unlabeled transfer set.
TINY = {
    "checkpoint_every": 0,  # a resume checkpoint every epoch: the crash tests die after a chosen epoch
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
    write_params(root, params)  # only the overrides: kd's defaults fill in the rest (the config stage resolves them)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    subprocess.run(["dvc", "remote", "add", "-d", "local", str(root / "dvc-remote")], cwd=root, check=True, capture_output=True)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=root, check=True)
    return root


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())
