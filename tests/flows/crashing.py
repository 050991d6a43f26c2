"""What the crash tests share: a project that dies somewhere interesting, and `kd run` as a real subprocess."""

import copy
import os
import subprocess

import torch
from kdproject import TINY

# Four cache shards and enough epochs to die in the middle of either.
PARAMS = copy.deepcopy(TINY) | {"soft_targets": {"shard_size": 200}}
PARAMS["student"] = {"model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 4}}


def kd_env(extra: dict | None = None) -> dict:
    from prefect.settings import PREFECT_API_URL

    # the test harness's Prefect API (a killed run leaves no temporary server behind)
    return os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()} | (extra or {})


def kd_run(root, crash_at: str | None = None, **kw) -> subprocess.CompletedProcess:
    run_env = kd_env({"KD_CRASH_AT": crash_at} if crash_at else None)
    return subprocess.run(["kd", "run", "--root", str(root), "--no-push"], capture_output=True, text=True, env=run_env, timeout=600, **kw)


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def registry_client(root):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, uri)
