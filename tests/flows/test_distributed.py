"""Distributed distillation on real processes: `kd stage distill --nproc 2` launches torchrun, two ranks
join a gloo process group on loopback and train with DistributedDataParallel. The result is checked
against a one-process run of the same project: the same soft-target cache byte for byte, weights equal within 1e-5 (float summation order is the
only difference), the same validation accuracies. A rank SIGKILLed after an epoch leaves a checkpoint
rank 0 wrote; the next run resumes from it and ends where the uninterrupted run did."""

import copy
import json
import os
import shutil
import subprocess

import pytest
import torch
from kdproject import TINY, make_project

pytestmark = [pytest.mark.flow, pytest.mark.slow]

TOLERANCE = 1e-5  # max absolute difference of any weight, 2 processes vs 1


def _params():
    params = copy.deepcopy(TINY)
    params["data"]["synthetic"]["n_transfer"] = 0
    params["student"]["train"] = {"epochs": 4, "batch_size": 50}  # 390 rows: the last global batch is ragged
    params["soft_targets"] = {"shard_size": 64}  # 7 shards: rank 0 takes 0, 2, 4, 6 and rank 1 takes 1, 3, 5
    return params


def _kd(root, *args, env=None, check=True):
    out = subprocess.run(["kd", *args, "--root", str(root)], capture_output=True, text=True, env=env or os.environ.copy(), timeout=600)
    assert not check or out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project with validate, train_teacher and soft_targets done, copied for each case."""
    root = make_project(tmp_path_factory.mktemp("ddp") / "base", _params())
    for stage in ("config", "validate", "train_teacher", "soft_targets"):
        _kd(root, "stage", stage)
    one = root.parent / "one"
    shutil.copytree(root, one)
    summary = json.loads(_kd(one, "stage", "distill").stdout)
    assert summary["processes"] == 1
    return root, one, summary


def _copy(prepared, name):
    root, _, _ = prepared
    dst = root.parent / name
    shutil.copytree(root, dst)
    return dst


def _max_difference(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_two_processes_match_one_within_tolerance(prepared):
    _, one, summary = prepared
    two = _copy(prepared, "two")
    result = json.loads(_kd(two, "stage", "distill", "--nproc", "2").stdout)
    assert result["processes"] == 2  # rank 0 saw a world of two
    for model in ("student", "scratch"):
        assert _max_difference(one / f"models/distilled/{model}/model.pt", two / f"models/distilled/{model}/model.pt") <= TOLERANCE
    assert result["student_val_accuracy"] == summary["student_val_accuracy"]
    assert result["scratch_val_accuracy"] == summary["scratch_val_accuracy"]
    assert not list((two / "checkpoints").glob("*.pt"))  # rank 0 removed its checkpoints when done


def test_a_rank_killed_mid_training_resumes_from_rank_0s_checkpoint(prepared):
    _, one, _ = prepared
    killed = _copy(prepared, "killed")
    crash = _kd(killed, "stage", "distill", "--nproc", "2", env=os.environ | {"KD_CRASH_AT": "fit:distill:epoch-2"}, check=False)
    assert crash.returncode != 0 and not (killed / "models/distilled/distill.json").exists()
    assert len(list((killed / "checkpoints").glob("distill-0-*.pt"))) == 1
    result = json.loads(_kd(killed, "stage", "distill", "--nproc", "2").stdout)
    assert result["stages"][0]["resumed_from_epoch"] == 2
    for model in ("student", "scratch"):
        assert _max_difference(one / f"models/distilled/{model}/model.pt", killed / f"models/distilled/{model}/model.pt") <= TOLERANCE


def test_a_loss_with_trained_heads_is_refused_with_the_reason(prepared):
    hint = _copy(prepared, "hint")
    out = _kd(hint, "stage", "distill", "--nproc", "2", "-s", "distill.losses={kd: 1.0, hint: 0.5}", check=False)
    assert out.returncode == 2 and "cannot be distributed" in out.stderr and "Traceback" not in out.stderr
    assert not (hint / "models/distilled/distill.json").exists()


def test_asking_for_cuda_without_one_is_a_clear_error(prepared):
    cuda = _copy(prepared, "cuda")
    out = _kd(cuda, "stage", "distill", "-s", "device=cuda", check=False)
    assert out.returncode == 2 and "device: cuda" in out.stderr and "Traceback" not in out.stderr


def _rebuild_cache(prepared, name, env=None, check=True):
    root = _copy(prepared, name)
    shutil.rmtree(root / "cache/soft_targets")
    return root, _kd(root, "stage", "soft_targets", "--nproc", "2", env=env, check=check)


def test_two_processes_build_the_one_process_cache_byte_for_byte(prepared):
    base, _, _ = prepared
    root, out = _rebuild_cache(prepared, "cache2")
    assert json.loads(out.stdout)["processes"] == 2
    want = json.loads((base / "cache/soft_targets/manifest.json").read_text())
    got = json.loads((root / "cache/soft_targets/manifest.json").read_text())
    assert got["files"] == want["files"] and got["key"] == want["key"]  # sha256 of every shard
    assert not list((root / "cache/soft_targets").glob("manifest.partial*"))


def test_a_rank_killed_mid_cache_resumes_from_the_shards_every_rank_finished(prepared):
    base, _, _ = prepared
    root, crash = _rebuild_cache(prepared, "cachekill", env=os.environ | {"KD_CRASH_AT": "soft_targets:shard-3"}, check=False)
    cache = root / "cache/soft_targets"
    assert crash.returncode != 0 and not (cache / "manifest.json").exists()
    rank1 = json.loads((cache / "manifest.partial-rank1.json").read_text())["files"]
    assert {"shard-00001.logp.npy", "shard-00003.logp.npy"} <= set(rank1)  # rank 1 finished shard 1, then 3, then died
    kept = {f: (cache / f).stat().st_mtime_ns for f in rank1}
    _kd(root, "stage", "soft_targets", "--nproc", "2")
    assert {f: (cache / f).stat().st_mtime_ns for f in kept} == kept  # not computed again
    want = json.loads((base / "cache/soft_targets/manifest.json").read_text())
    assert json.loads((cache / "manifest.json").read_text())["files"] == want["files"]
