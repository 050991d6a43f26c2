"""End to end: the Prefect flow over DVC stages, MLflow tracking, gated registration, incremental reruns.

One project per module; the tests run in order, each building on the registry state the previous left.
"""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
from kdproject import TINY, make_project, read_params, write_params

pytestmark = pytest.mark.flow

STAGES = ["config", "validate", "train_teacher", "soft_targets", "distill", "evaluate", "checks"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    return make_project(tmp_path_factory.mktemp("kdproj"), copy.deepcopy(TINY))


def _run(root):
    from flows.retrain import retrain

    return retrain(root=str(root), push_remote=True)


def _ran(result):
    return {r["stage"]: r["ran"] for r in result["stages"]}


def _client(root):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def _champion(root):
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(root).get_model_version_by_alias("kd-student", "champion").version)
    except MlflowException:
        return None


def _versions(root):
    return sorted(int(v.version) for v in _client(root).search_model_versions("name = 'kd-student'"))


def test_first_run_runs_every_stage_registers_and_promotes(project):
    result = _run(project)
    assert _ran(result) == dict.fromkeys(STAGES, True)
    assert result["promoted"] and result["version"] == "1" and _champion(project) == "1"
    mv = _client(project).get_model_version("kd-student", "1")
    for tag in ("git_commit", "config_hash", "dvc.data", "dvc.teacher", "dvc.soft_targets", "dvc.models", "teacher_run_id", "teacher_version"):
        assert mv.tags.get(tag) not in (None, "", "unknown"), tag
    assert mv.tags["gates.passed"] == "true" and mv.tags["gate.accuracy"].startswith("pass") and mv.tags["kd.publish"] == "done"
    # the teacher is registered under its own name, linked from the student's lineage
    teacher_mv = _client(project).get_model_version("kd-teacher", mv.tags["teacher_version"])
    assert teacher_mv.tags["teacher_hash"] == mv.tags["teacher_hash"]
    # a parent run with one child run per stage, the data input and the artifacts
    client = _client(project)
    parent = client.get_run(result["run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert sorted(c.data.tags["stage"] for c in children) == sorted(STAGES)
    assert mv.tags["teacher_run_id"] in {c.info.run_id for c in children if c.data.tags["stage"] == "train_teacher"}
    arts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"gates.md", "gates.json", "metrics.json"} <= arts | {a.path for c in children for a in client.list_artifacts(c.info.run_id)}
    assert parent.data.tags["kd.logged"] == "true" and parent.data.tags["kd.student_uri"].startswith("models:/")
    assert any(i.dataset.name == "prepared-train" for c in children for i in c.inputs.dataset_inputs)
    # DVC pushed data, teacher and cache to the local remote
    assert result["dvc_pushed"] > 0 and any((project / "dvc-remote").rglob("*"))


def test_champion_is_a_complete_predictor_in_a_fresh_process(project):
    """Raw rows in (the source's columns, the sensitive one ignored), class names and probabilities out,
    from nothing but the registry: preprocessing and classes travel inside the model."""
    import pandas as pd

    test = pd.read_parquet(project / "data/prepared/raw/test.parquet")
    code = f"""
import json, sys, mlflow, pandas as pd
mlflow.set_tracking_uri('sqlite:///{project / 'mlflow.db'}')
model = mlflow.pyfunc.load_model('models:/kd-student@champion')
rows = pd.read_parquet('{project / 'data/prepared/raw/test.parquet'}').drop(columns=['label'])
out = model.predict(rows)
print(json.dumps({{"labels": out['label'].tolist(), "probs": out['probabilities'].map(list).tolist()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    acc = float(np.mean(np.array(got["labels"]) == test["label"].astype(str).to_numpy()))
    assert acc == pytest.approx(metrics["student_onnx_int8"]["accuracy"], abs=1e-9)  # the bundle's default backend
    assert np.allclose(np.sum(got["probs"], axis=1), 1.0, atol=1e-5) and set(got["labels"]) <= {"0", "1", "2"}


def test_edge_graph_alone_agrees_with_the_pyfunc(project):
    """onnxruntime alone, raw columns in: the edge graph agrees with the complete predictor on >= 99.5% of rows."""
    import onnxruntime as ort
    import pandas as pd

    from kd.predictor import Predictor

    test = pd.read_parquet(project / "data/prepared/raw/test.parquet")
    session = ort.InferenceSession(str(project / "models/export/edge.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: (test[i.name].to_numpy(np.float32) if i.type == "tensor(float)" else test[i.name].astype(str).to_numpy(object)).reshape(-1, 1)
             for i in session.get_inputs()}
    labels, _ = session.run(["label", "probabilities"], feeds)
    pyfunc_labels, _ = Predictor(project / "models/export", backend="onnx_int8").predict(test)
    assert np.mean(np.asarray(labels).astype(str) == np.asarray(pyfunc_labels)) >= 0.995


def test_the_champion_can_be_imported_as_a_teacher(project, tmp_path):
    """teacher.mode 'import' with an MLflow URI: the registered student (weights + its preprocessing)
    teaches the next student; the run's features are mapped exactly onto the ones it was trained on."""
    from kd import data, models, teacher
    from kd.config import load_params
    from kd.stages import _import_from_registry

    p = load_params(project / "params.yaml", ["teacher.mode=import", "teacher.import_format=mlflow",
                                              "teacher.import_uri=models:/kd-student@champion"])
    prep = data.load(project / "data/prepared")
    summary = _import_from_registry(project, p, prep, tmp_path / "imported")
    imported, _ = teacher.load_teacher(tmp_path / "imported")
    student, _ = models.load(project / "models/distilled/student/model.pt")
    logp = teacher.predict_logp(imported, prep.x["test"])
    assert (logp.argmax(1) == teacher.predict_logp(student, prep.x["test"]).argmax(1)).all()
    assert summary["val_accuracy"] > 0.5 and summary["members"][0]["format"] == "mlflow"


def test_noop_rerun_skips_every_stage_and_leaves_the_registry_alone(project):
    before = _versions(project)
    client = _client(project)
    n_runs = len(client.search_runs([client.get_experiment_by_name("kd").experiment_id]))
    result = _run(project)  # the flow: every task asks DVC and skips
    assert _ran(result) == dict.fromkeys(STAGES, False)
    assert _versions(project) == before and _champion(project) == "1"
    # `kd run` sees the same from DVC's status and the publish record, and starts no flow at all
    out = subprocess.run(["kd", "run", "--root", str(project)], capture_output=True, text=True)
    assert out.returncode == 0 and "nothing changed since run" in out.stdout and "validate: skipped" in out.stdout
    assert len(client.search_runs([client.get_experiment_by_name("kd").experiment_id])) == n_runs


def test_a_corrupted_cache_shard_is_rebuilt_alone_and_nothing_downstream_reruns(project):
    cache = project / "cache/soft_targets"
    manifest = json.loads((cache / "manifest.json").read_text())
    shard = cache / "shard-00000.logp.npy"
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(8)  # same size, other bytes: only the checksum can tell
    shard.write_bytes(bytes(data))
    versions = _versions(project)
    result = _run(project)
    assert _ran(result) == dict.fromkeys(STAGES, False) | {"soft_targets": True}  # DVC kept the directory (persist)
    assert json.loads((cache / "manifest.json").read_text())["files"] == manifest["files"]  # rebuilt to the same bytes
    assert _versions(project) == versions


def test_student_change_reruns_only_downstream_and_reuses_the_cache(project):
    manifest = (project / "cache/soft_targets/manifest.json").read_text()
    params = read_params(project)
    params["student"]["train"]["epochs"] = 4
    write_params(project, params)
    result = _run(project)
    assert _ran(result) == {"config": True, "validate": False, "train_teacher": False, "soft_targets": False, "distill": True,
                            "evaluate": True, "checks": True}
    assert (project / "cache/soft_targets/manifest.json").read_text() == manifest
    assert result["version"] == "2"
    mv = _client(project).get_model_version("kd-student", "2")
    assert not mv.tags["gate.champion_delta"].startswith("skipped")  # compared against version 1
    assert mv.tags["gate.drift_reference"].startswith("pass")  # same data as the champion's
    assert _client(project).get_run(result["run_id"]).data.tags["gate.champion_delta"] in ("pass", "fail")
    assert mv.tags["teacher_run_id"] == _client(project).get_model_version("kd-student", "1").tags["teacher_run_id"]


def test_failing_gate_registers_but_moves_no_alias(project):
    champion = _champion(project)
    params = read_params(project)
    params["gates"]["min_accuracy"] = 0.999
    params["student"]["train"]["epochs"] = 5
    write_params(project, params)
    result = _run(project)
    assert not result["promoted"] and "accuracy" in result["blocked"]
    mv = _client(project).get_model_version("kd-student", result["version"])
    assert mv.tags["gate.accuracy"].startswith("fail") and mv.tags["gates.passed"] == "false" and "accuracy" in mv.tags["gates.failed"]
    assert _champion(project) == champion


def test_promote_and_rollback_by_hand_keep_the_history(project):
    versions = _versions(project)
    champion = _champion(project)
    target = str(versions[-1])
    out = subprocess.run(["kd", "promote", target, "--root", str(project), "--reason", "checked by hand"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _champion(project) == target
    client = _client(project)
    assert str(client.get_model_version_by_alias("kd-student", "previous").version) == champion
    assert client.get_model_version("kd-student", target).tags["promotion_reason"] == "checked by hand"
    out = subprocess.run(["kd", "rollback", "--root", str(project)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _champion(project) == champion
    # a second rollback walks one more champion back (v1 was promoted by the first run, v2 by the second)
    before = _champion(project)
    out = subprocess.run(["kd", "rollback", "--root", str(project), "--reason", "older one"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _champion(project) == "1" != before
    aliases = client.get_registered_model("kd-student").aliases
    assert "previous" not in aliases  # nothing below v1 in the history
    status = subprocess.run(["kd", "status", "--root", str(project)], capture_output=True, text=True).stdout
    assert "rollback: v2 -> v1 by kd rollback (older one)" in status and "promote" in status
    out = subprocess.run(["kd", "rollback", "--root", str(project)], capture_output=True, text=True)
    assert out.returncode == 2 and "no @previous" in out.stderr and _champion(project) == "1"
    bad = subprocess.run(["kd", "promote", "99", "--root", str(project)], capture_output=True, text=True)
    assert bad.returncode == 2 and "no version '99'" in bad.stderr and _champion(project) == "1"


def test_a_changed_default_reruns_exactly_the_stages_that_read_it(project, monkeypatch):
    """Edit a default in the project's kd/config (not params.yaml): the config stage re-resolves the
    params, and only the stage whose section changed runs again (evaluate reads evaluate.*)."""
    monkeypatch.setenv("PYTHONPATH", str(project))  # the stages run the project's own kd code
    train_py = project / "kd" / "config" / "train.py"
    text = train_py.read_text()
    assert "throughput_batch: int = Field(256, ge=1)" in text
    train_py.write_text(text.replace("throughput_batch: int = Field(256, ge=1)", "throughput_batch: int = Field(128, ge=1)"))
    result = _run(project)
    assert _ran(result) == {"config": True, "validate": False, "train_teacher": False, "soft_targets": False, "distill": False,
                            "evaluate": True, "checks": False}
    assert "throughput_batch: 128" in (project / "params.resolved.yaml").read_text()


def test_data_change_reruns_everything(project):
    params = read_params(project)
    params["gates"]["min_accuracy"] = 0.5
    params["data"]["synthetic"]["n_samples"] = 950
    write_params(project, params)
    result = _run(project)
    assert _ran(result) == dict.fromkeys(STAGES, True)


def test_dvc_repro_alone_runs_a_minimal_params_file(project):
    """DVC without kd run or Prefect: the minimal params.yaml (overrides only) is enough."""
    params = read_params(project)
    assert "paths" not in params and "soft_targets" not in params  # the file holds what the user means
    params["student"]["train"]["epochs"] = 2
    write_params(project, params)
    out = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Running stage 'distill'" in out.stdout and "Running stage 'validate'" not in out.stdout
    assert json.loads((project / "models/distilled/distill.json").read_text())["stages"][0]["epochs"] == 2
