"""Real faults, as they happen: a SIGKILLed `kd run` (in the soft-target build, mid-training), two runs at once,
the MLflow server stopped mid-run. After each, the next `kd run` ends exactly where an uninterrupted run ends.
(Kills at every step of publication: test_crash_publication.py.)"""

import copy
import json
import signal
import subprocess
import time

import pytest
import torch
from crashing import PARAMS, kd_env, kd_run, registry_client, weights
from kdproject import make_project
from mlflow_server import free_port, start_mlflow

pytestmark = [pytest.mark.flow, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prefect_api):
    """The same project, run once without interruption."""
    root = make_project(tmp_path_factory.mktemp("reference"), copy.deepcopy(PARAMS))
    out = kd_run(root)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_killed_in_the_cache_build_and_in_training_resumes_to_the_uninterrupted_result(tmp_path, reference):
    root = make_project(tmp_path / "proj", copy.deepcopy(PARAMS))
    cache = root / "cache/soft_targets"

    out = kd_run(root, crash_at="soft_targets:shard-1")  # killed after the second of four shards
    assert out.returncode != 0 and "stage soft_targets failed" in out.stderr
    partial = json.loads((cache / "manifest.partial.json").read_text())
    assert sorted(partial["files"]) == ["shard-00000.logp.npy", "shard-00001.logp.npy"] and not (cache / "manifest.json").exists()
    kept = {f: (cache / f).stat().st_ino for f in partial["files"]}

    out = kd_run(root, crash_at="fit:distill:epoch-2")  # the cache completes, then training dies after epoch 2
    assert out.returncode != 0 and "stage distill failed" in out.stderr
    assert {f: (cache / f).stat().st_ino for f in kept} == kept  # the two finished shards were not rebuilt
    assert json.loads((cache / "manifest.json").read_text())["files"] == json.loads((reference / "cache/soft_targets/manifest.json").read_text())["files"]
    assert any((root / "checkpoints").glob("distill-0-*.pt")) and not (root / "mlflow.db").exists()

    out = kd_run(root)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((root / "models/distilled/distill.json").read_text())
    assert summary["stages"][0]["resumed_from_epoch"] == 2  # it resumed, it did not start over
    for model in ("student", "scratch"):
        got, want = weights(root / f"models/distilled/{model}/model.pt"), weights(reference / f"models/distilled/{model}/model.pt")
        assert all(torch.equal(got[k], want[k]) for k in want), model
    champion = registry_client(root).get_model_version_by_alias("kd-student", "champion")
    assert str(champion.version) == "1" and champion.tags["teacher_run_id"] not in ("", "unknown")


def test_two_runs_at_once_take_turns(tmp_path, reference):
    root = make_project(tmp_path / "proj", copy.deepcopy(PARAMS))
    cmd = ["kd", "run", "--root", str(root), "--no-push"]
    first = subprocess.Popen(cmd, env=kd_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(cmd, env=kd_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert sum("waiting for it to finish" in err for _, err in outs) == 1  # one waited, and said so
    assert sum("nothing changed since run" in out for out, _ in outs) == 1  # then found the work done
    assert [str(v.version) for v in registry_client(root).search_model_versions("name = 'kd-student'")] == ["1"]
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {"config": ["always changed"]}  # every stage up to date but the resolver


def test_mlflow_server_stopped_mid_run(tmp_path, prefect_api):
    """A real `mlflow server`, stopped when the stages are done: a clear error, nothing half-registered;
    with the server back, the next run completes the publication."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = lambda: start_mlflow(port, f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "server.log")

    server = start()
    root = make_project(tmp_path / "proj", copy.deepcopy(PARAMS) | {"registry": {"tracking_uri": url}})
    run_env = kd_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    run = subprocess.Popen(["kd", "run", "--root", str(root), "--no-push"], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while run.poll() is None and not (root / "reports/checks/checks.json").exists():
        time.sleep(0.2)
    server.send_signal(signal.SIGTERM)  # the stages are done; publication is about to talk to the server
    server.wait(timeout=30)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 1 and "Traceback" not in err and err.count("error:") == 1, err[-3000:]
    assert f"MLflow at {url}" in err

    server = start()
    try:
        from mlflow import MlflowClient

        client = MlflowClient(url, url)
        for mv in client.search_model_versions("name = 'kd-student'"):  # whatever got in is resumable, not promoted
            assert mv.tags.get("kd.publish") != "done"
        assert not client.search_registered_models() or "champion" not in (client.get_registered_model("kd-student").aliases or {})
        out = subprocess.run(["kd", "run", "--root", str(root), "--no-push"], capture_output=True, text=True, env=run_env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert str(client.get_model_version_by_alias("kd-student", "champion").version) == "1"
        assert [v.tags["kd.publish"] for v in client.search_model_versions("name = 'kd-student'")] == ["done"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
