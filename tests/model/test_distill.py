"""Behaviour of distillation: the student learns the teacher's function; cached and online runs are the
same run; assistants, self-distillation and imported teachers are configuration, not code paths."""

import copy

import numpy as np
import pytest
import torch

from kd import models, soft_targets, teacher
from kd.config import Params
from kd.data import prepare, split
from kd.distill import distill, distill_one
from kd.sources import load_source
from kd.training import accuracy

BASE = {
    "data": {"source": "synthetic", "synthetic": {"n_samples": 800, "n_features": 8, "n_classes": 4, "class_sep": 1.2, "n_transfer": 300}},
    "teacher": {"model": {"arch": "mlp", "width": 64, "depth": 2}, "train": {"epochs": 12}},
    "student": {"model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 8}},
    "soft_targets": {"dtype": "float32"},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    p = Params.model_validate(BASE)
    prep = prepare(split(load_source(p.data), p.data, p.seed), p.data)
    prep.meta["data_hash"] = "d0"
    teacher.train_teacher(prep, p, root / "teacher")
    return root, p, prep


def _cache(root, p, prep, name="cache"):
    model, summary = teacher.load_teacher(root / "teacher")
    key = soft_targets.cache_key(summary["teacher_hash"], "d0", p.soft_targets, p.seed)
    soft_targets.build(root / name, key, prep.distill_inputs(), lambda xb: teacher.predict_logp(model, xb), prep.n_classes, p.soft_targets, p.seed)
    return model, soft_targets.SoftTargets(root / name, expected_key=key)


def _agreement(a, b, x):
    with torch.no_grad():
        return float((a(torch.from_numpy(x)).argmax(1) == b(torch.from_numpy(x)).argmax(1)).float().mean())


def test_student_matches_teacher_better_than_its_untrained_self(setup):
    root, p, prep = setup
    model, targets = _cache(root, p, prep)
    p = p.model_copy(deep=True)
    p.student.train.epochs = 30
    student, info = distill_one(prep, p.student.model, model, targets, p, seed=0, ckpt=None)
    torch.manual_seed(0)
    untrained = models.build(p.student.model, prep.input_shape, prep.n_classes)
    x = prep.x["test"]
    assert _agreement(student, model, x) > max(0.8, _agreement(untrained, model, x) + 0.3)
    assert info["source"] == "cache" and accuracy(student, x, prep.y["test"]) > 0.7


def test_cached_views_train_exactly_what_online_training_would(setup):
    """Function matching (Beyer et al. 2022): with augmented views, a cached run equals an online run."""
    root, p0, prep = setup
    p = Params.model_validate(copy.deepcopy(BASE) | {"soft_targets": {"dtype": "float32", "views": 3, "augment": {"noise_std": 0.2, "mixup_alpha": 0.4}}})
    p.student.train.epochs = 3
    model, targets = _cache(root, p, prep, "cache_views")
    cached, _ = distill_one(prep, p.student.model, model, targets, p, seed=1, ckpt=None)
    online, info = distill_one(prep, p.student.model, model, None, p, seed=1, ckpt=None)
    assert info["source"] == "online"
    for k, v in cached.state_dict().items():
        torch.testing.assert_close(v, online.state_dict()[k], rtol=1e-4, atol=1e-5)


def test_feature_losses_run_online_with_hooks(setup):
    root, p, prep = setup
    model, _ = teacher.load_teacher(root / "teacher")
    q = Params.model_validate(copy.deepcopy(BASE) | {"distill": {"losses": {"kd": 1.0, "hint": 0.5, "rkd": 0.5, "pkt": 0.5}}})
    q.student.train.epochs = 2
    student, info = distill_one(prep, q.student.model, model, None, q, seed=0, ckpt=None)
    assert set(info["history"][-1]) >= {"kd", "hint", "rkd", "pkt"} and info["source"] == "online"
    # attention transfer needs maps of one size: 8 student units vs 64 teacher units is a clear error
    q.distill.losses = {"at": 1.0}
    with pytest.raises(ValueError, match="attention transfer needs maps of equal size"):
        distill_one(prep, q.student.model, model, None, q, seed=0, ckpt=None)


def test_assistant_chain_and_self_distillation_are_configuration(setup):
    root, p, prep = setup
    _cache(root, p, prep)
    q = Params.model_validate(copy.deepcopy(BASE) | {"distill": {"assistants": [{"arch": "mlp", "width": 24, "depth": 1}]}})
    q.student.train.epochs = 3
    out = distill(prep, root / "teacher", root / "cache", q, root / "chain")
    assert [s["arch"] + str(s["width"]) for s in out["stages"]] == ["mlp24", "mlp8"]
    assert out["stages"][0]["source"] == "cache" and out["stages"][1]["source"] == "online"
    born_again = Params.model_validate(copy.deepcopy(BASE) | {"student": {"same_as_teacher": True, "train": {"epochs": 1}}})
    out = distill(prep, root / "teacher", root / "cache", born_again, root / "self")
    student, _ = models.load(root / "self" / "student" / "model.pt")
    t, _ = teacher.load_teacher(root / "teacher")
    assert models.param_count(student) == models.param_count(t.members[0])


def test_stale_cache_is_refused_by_distill(setup):
    root, p, prep = setup
    _cache(root, p, prep)
    q = Params.model_validate(copy.deepcopy(BASE) | {"soft_targets": {"dtype": "float32", "top_k": 2}})
    with pytest.raises(soft_targets.CacheError, match="run 'dvc repro soft_targets'"):
        distill(prep, root / "teacher", root / "cache", q, root / "stale")


def test_import_teacher_from_state_dict_and_torchscript(setup, tmp_path):
    root, p, prep = setup
    model, _ = teacher.load_teacher(root / "teacher")
    member = model.members[0]
    torch.save(member.state_dict(), tmp_path / "sd.pt")
    torch.jit.script(member).save(str(tmp_path / "ts.pt"))
    expected = teacher.predict_logp(model, prep.x["test"])
    for fmt, path in (("state_dict", "sd.pt"), ("torchscript", "ts.pt")):
        q = Params.model_validate(copy.deepcopy(BASE) | {"teacher": BASE["teacher"] | {"mode": "import", "import_format": fmt, "import_uri": str(tmp_path / path)}})
        summary = teacher.train_teacher(prep, q, tmp_path / fmt)
        loaded, _ = teacher.load_teacher(tmp_path / fmt)
        np.testing.assert_allclose(teacher.predict_logp(loaded, prep.x["test"]), expected, rtol=1e-5, atol=1e-6)
        assert summary["teacher_hash"] == teacher.load_teacher(root / "teacher")[1]["teacher_hash"]
    bad = Params.model_validate(copy.deepcopy(BASE) | {"teacher": {"mode": "import", "import_uri": str(tmp_path / "sd.pt"), "model": {"arch": "mlp", "width": 7}}})
    with pytest.raises(ValueError, match="weights do not fit teacher.model mlp"):
        teacher.train_teacher(prep, bad, tmp_path / "bad")
