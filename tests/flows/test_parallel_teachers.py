"""Ensemble members train at once: with `distributed.teacher_workers: 2` the flow maps one task per member
on a Dask task runner, each task trains its member in its own `kd` process into the member store, and the
train_teacher stage assembles them. The members ran in two processes whose training overlapped in time,
and the teacher is the one sequential training gives (same content hash)."""

import copy
import json
import shutil
import subprocess

import pytest
from kdproject import TINY, make_project

pytestmark = [pytest.mark.flow, pytest.mark.slow]


def _params():
    params = copy.deepcopy(TINY)
    params["data"]["synthetic"]["n_samples"] = 4000
    params["teacher"] = {"mode": "ensemble", "train": {"epochs": 25},
                         "members": [{"arch": "mlp", "width": 64, "depth": 2, "seed": 0}, {"arch": "mlp", "width": 64, "depth": 2, "seed": 1}]}
    params["distributed"] = {"teacher_workers": 2}
    return params


def test_two_members_train_at_once_and_give_the_sequential_teacher(tmp_path, prefect_api):
    from flows.retrain import retrain

    root = make_project(tmp_path / "parallel", _params())
    sequential = tmp_path / "sequential"
    shutil.copytree(root, sequential)

    result = retrain(root=str(root), push_remote=False)
    assert result["version"] == "1"
    teacher = json.loads((root / "models/teacher/teacher.json").read_text())
    first, second = teacher["members"]
    assert first["from_store"] and second["from_store"]
    assert first["pid"] != second["pid"]  # two processes
    assert max(first["started"], second["started"]) < min(first["finished"], second["finished"])  # at the same time
    assert not list((root / "checkpoints/members").glob("*.pt"))  # the store keeps only what is pending

    for stage in ("config", "validate", "train_teacher"):  # the same project, members one after the other
        subprocess.run(["kd", "stage", stage, "--root", str(sequential)], check=True, capture_output=True)
    alone = json.loads((sequential / "models/teacher/teacher.json").read_text())
    assert not any(m.get("from_store") for m in alone["members"])
    assert alone["teacher_hash"] == teacher["teacher_hash"]


def test_a_member_index_out_of_range_is_refused(tmp_path):
    root = make_project(tmp_path / "proj", _params())
    for stage in ("config", "validate"):
        subprocess.run(["kd", "stage", stage, "--root", str(root)], check=True, capture_output=True)
    out = subprocess.run(["kd", "stage", "train_teacher", "--member", "5", "--root", str(root)], capture_output=True, text=True)
    assert out.returncode == 2 and "--member 5" in out.stderr
