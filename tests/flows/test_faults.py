"""Fault injection through the whole flow: bad data stops the pipeline before training, naming the
column, and registers nothing; a failing fairness gate registers the version but moves no alias."""

import copy

import numpy as np
import pandas as pd
import pytest
from kdproject import TINY, make_project, read_params, write_params

pytestmark = pytest.mark.flow


def _csv(path, n=600, seed=0):
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b"], n)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    df = pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"]).assign(group=group, label=y)
    df.to_csv(path, index=False)
    return df


def _csv_params():
    p = copy.deepcopy(TINY)
    p["data"] = {"source": "csv:data.csv", "sensitive_columns": ["group"], "feature_columns": ["f0", "f1", "f2", "f3"]}
    return p


@pytest.mark.parametrize(
    "corrupt,column",
    [
        (lambda df: df.astype({"f2": object}).assign(f2=lambda d: d.f2.where(d.index != 7, "n/a")), "f2"),
        (lambda df: df.assign(f1=lambda d: d.f1.where(d.index % 50 != 3)), "f1"),
        (lambda df: df.drop(columns="f3"), "f3"),
        (lambda df: df.assign(label=lambda d: d.label.where(d.index != 11, 7)), "label"),
    ],
    ids=["string-in-numeric", "nans", "missing-column", "unknown-label"],
)
def test_corrupted_input_stops_before_training_and_registers_nothing(tmp_path, prefect_api, corrupt, column):
    from flows.retrain import retrain

    root = make_project(tmp_path / "proj", _csv_params())
    # a clean reference file fixes the known schema and label set, then the data is corrupted
    df = _csv(root / "data.csv")
    params = read_params(root)
    params["data"]["classes"] = ["0", "1"]
    write_params(root, params)
    corrupt(df).to_csv(root / "data.csv", index=False)
    state = retrain(root=str(root), return_state=True)
    assert state.is_failed()
    message = str(state.message) + str(state.result(raise_on_failure=False))
    assert "stage validate failed" in message and column in message
    assert not (root / "models").exists() and not (root / "cache").exists()
    assert not (root / "mlflow.db").exists()


def test_empty_file_is_named(tmp_path, prefect_api):
    from flows.retrain import retrain

    root = make_project(tmp_path / "proj", _csv_params())
    (root / "data.csv").write_text("")
    state = retrain(root=str(root), return_state=True)
    assert state.is_failed() and "data.csv: the file is empty" in str(state.result(raise_on_failure=False))
    assert not (root / "mlflow.db").exists()


def test_failing_fairness_gate_blocks_promotion(tmp_path, prefect_api):
    from mlflow import MlflowClient

    from flows.retrain import retrain

    root = make_project(tmp_path / "proj", copy.deepcopy(TINY))
    first = retrain(root=str(root), push_remote=False)
    assert first["promoted"]
    params = read_params(root)
    params["checks"]["fairness"]["max_disparity"] = 0.0  # any measured disparity now fails
    params["student"]["train"]["epochs"] = 4
    write_params(root, params)
    second = retrain(root=str(root), push_remote=False)
    assert not second["promoted"] and "fairness_group" in second["blocked"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}", f"sqlite:///{root / 'mlflow.db'}")
    mv = client.get_model_version("kd-student", second["version"])
    assert mv.tags["gate.fairness_group"].startswith("fail") and "fairness_group" in mv.tags["gates.failed"]
    assert str(client.get_model_version_by_alias("kd-student", "champion").version) == first["version"]
