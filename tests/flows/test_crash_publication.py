"""A SIGKILLed `kd run` at every step of publication (logged, registered, gated, alias written ahead, moved,
promoted, done): the next run ends exactly where an uninterrupted publication ends, registry and record alike."""

import copy
import json
import shutil
import signal
import subprocess

import pytest
from crashing import PARAMS, kd_env, kd_run, registry_client
from kdproject import make_project, read_params, write_params

pytestmark = [pytest.mark.flow, pytest.mark.slow]

CRASH_POINTS = ["publish:logging", "publish:logged", "publish:registered", "publish:gated", "aliases:written-ahead",
                "aliases:previous-moved", "publish:promoted", "publish:done"]
VOLATILE = {"pipeline_run_id", "promoted_at"}


def registry_state(root) -> dict:
    """Everything publication decides, without run ids and timestamps."""
    client = registry_client(root)
    state = {}
    for name in ("kd-student", "kd-teacher"):
        state[name] = {v.version: {k: t for k, t in v.tags.items() if k not in VOLATILE}
                       for v in client.search_model_versions(f"name = '{name}'")}
    model = client.get_registered_model("kd-student")
    tags = dict(model.tags)
    assert "kd.pending" not in tags, "an alias move was left half done"
    state["aliases"] = dict(model.aliases)
    state["stack"] = tags.get("kd.champions")
    state["history"] = [{k: v for k, v in json.loads(tags[k]).items() if k != "at"} for k in sorted(tags) if k.startswith("kd.history.")]
    exp = client.get_experiment_by_name("kd").experiment_id
    live = [r for r in client.search_runs([exp], "tags.kind = 'pipeline'")]
    state["pipeline_runs"] = sorted((r.data.tags["kd.candidate"], r.info.status, r.data.tags.get("kd.logged")) for r in live)
    state["published"] = {k: v for k, v in json.loads((root / "reports/publish/published.json").read_text()).items() if k != "run_id"}
    return state


@pytest.fixture(scope="module")
def second_candidate(tmp_path_factory, prefect_api):
    """v1 is champion; a changed student has gone through the stages (dvc repro) but is not published.
    Returns the project and a snapshot of its registry and publish record at that point."""
    root = make_project(tmp_path_factory.mktemp("publish") / "proj", copy.deepcopy(PARAMS))
    out = kd_run(root)
    assert out.returncode == 0, out.stderr[-3000:]
    params = read_params(root)
    params["student"]["train"]["epochs"] = 3
    write_params(root, params)
    out = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, env=kd_env())
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    snap = root.parent / "snapshot"
    snap.mkdir()
    for name in ("mlflow.db", "mlartifacts", "reports/publish"):
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (root / name).is_dir() else shutil.copy)(root / name, snap / name)
    return root, snap


def _restore(root, snap):
    for name in ("mlflow.db", "mlartifacts", "reports/publish"):
        target = root / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        (shutil.copytree if (snap / name).is_dir() else shutil.copy)(snap / name, target)


@pytest.fixture(scope="module")
def uninterrupted(second_candidate):
    root, snap = second_candidate
    _restore(root, snap)
    out = kd_run(root)
    assert out.returncode == 0 and "version 2 is now @champion" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    return registry_state(root)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_publication_killed_at_any_step_ends_where_an_uninterrupted_run_ends(second_candidate, uninterrupted, point):
    root, snap = second_candidate
    _restore(root, snap)
    out = kd_run(root, crash_at=point)
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stderr[-2000:])
    out = kd_run(root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert registry_state(root) == uninterrupted
    assert "version 2 is now @champion" in out.stdout
