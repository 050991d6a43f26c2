"""Input files are dependencies by content: a data file edited in place (same name, same params) re-runs
the pipeline from validate; an untouched one does not."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kdproject import TINY, make_project

pytestmark = pytest.mark.flow


def _write(path, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    pd.DataFrame(x, columns=["f0", "f1", "f2"]).assign(label=(x[:, 0] + x[:, 1] > 0).astype(int)).to_csv(path, index=False)


def test_editing_the_data_file_reruns_validate(tmp_path, prefect_api):
    from flows.retrain import retrain

    params = copy.deepcopy(TINY)
    params["data"] = {"source": "csv:data.csv"}
    root = make_project(tmp_path / "proj", params)
    _write(root / "data.csv", 400)
    first = retrain(root=str(root), push_remote=False)
    assert all(r["ran"] for r in first["stages"])
    again = retrain(root=str(root), push_remote=False)
    assert not any(r["ran"] for r in again["stages"])
    _write(root / "data.csv", 420)  # same file name, same params.yaml, new content
    from kd.config import load_params
    from kd.stages import out_of_date

    # what `kd run` asks first (is there anything to do?) resolves the config: the flow still reports it as run
    assert out_of_date(root, load_params(root / "params.yaml"))[0] == "validate"
    third = retrain(root=str(root), push_remote=False)
    ran = {r["stage"]: r["ran"] for r in third["stages"]}
    assert ran["config"] and ran["validate"] and ran["train_teacher"]
    assert third["version"] == "2"


def test_reference_drift_sees_a_shift_and_the_champion_is_judged_on_this_split(tmp_path, prefect_api):
    """A location shift of one column: the reference-drift gate (raw columns against the champion's
    training reference) reports it; champion_delta compares with the champion's accuracy measured on the
    new test split, which we recompute here from the registry's champion."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from flows.retrain import retrain
    from kd.card import bundle_dir
    from kd.predictor import Predictor

    params = copy.deepcopy(TINY)
    params["data"] = {"source": "csv:data.csv"}
    params["checks"]["drift"] = {"reference": "warn", "drift_share": 0.3}  # one of three columns shifts
    root = make_project(tmp_path / "proj", params)
    _write(root / "data.csv", 600)
    assert retrain(root=str(root), push_remote=False)["version"] == "1"
    df = pd.read_csv(root / "data.csv")
    df["f2"] = df["f2"] * 3.0 + 4.0  # location and scale of one feature
    df.to_csv(root / "data.csv", index=False)
    second = retrain(root=str(root), push_remote=False)
    assert second["version"] == "2"  # standardisation hides the shift from the weights, not from the predictor
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mv = MlflowClient(uri, uri).get_model_version("kd-student", second["version"])
    gates = {g["name"]: g for g in json.loads((root / "reports/publish/gates.json").read_text())["gates"]}
    assert gates["drift_reference"]["passed"] is False and "f2" in gates["drift_reference"]["detail"]
    assert mv.tags["gate.drift_reference"].startswith("warn")
    mlflow.set_tracking_uri(uri)
    downloaded = mlflow.artifacts.download_artifacts("models:/kd-student/1", dst_path=str(tmp_path / "champion"))
    champion = Predictor(bundle_dir(Path(downloaded)), backend="torch")  # the backend the student's own accuracy used
    test = pd.read_parquet(root / "data/prepared/raw/test.parquet")
    predicted, _ = champion.predict(test.drop(columns="label"))
    acc = float((np.asarray(predicted) == test["label"].astype(str).to_numpy()).mean())
    delta = gates["champion_delta"]
    assert delta["threshold"] == pytest.approx(acc - TINY["gates"]["max_champion_drop"], abs=1e-9)
