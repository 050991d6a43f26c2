"""Behaviour of distillation: the student learns the teacher's function; cached and online runs are the
same run; assistants, self-distillation and imported teachers are configuration, not code paths."""

import copy
import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
from tiny_teacher import cache, trained_teacher

import kd.distill
import kd.training
from kd import augment, models, soft_targets, teacher
from kd import distill as distill_module
from kd.config import Params
from kd.distill import EpochViews, distill, distill_one, scratch_batches, train_scratch
from kd.training import StopTraining, accuracy, cross_entropy_loss, fit, hard_label_batches

BASE = {
    "data": {"source": "synthetic", "synthetic": {"n_samples": 800, "n_features": 8, "n_classes": 4, "class_sep": 1.2, "n_transfer": 300}},
    "teacher": {"model": {"arch": "mlp", "width": 64, "depth": 2}, "train": {"epochs": 12}},
    "student": {"model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 8}},
    "soft_targets": {"dtype": "float32"},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return root, *trained_teacher(root, BASE)


def _agreement(a, b, x):
    with torch.no_grad():
        return float((a(torch.from_numpy(x)).argmax(1) == b(torch.from_numpy(x)).argmax(1)).float().mean())


def test_student_matches_teacher_better_than_its_untrained_self(setup):
    root, p, prep = setup
    model, targets = cache(root, p, prep)
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
    model, targets = cache(root, p, prep, "cache_views")
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
    cache(root, p, prep)
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


def test_a_resume_under_another_precision_starts_afresh(setup, tmp_path):
    """amp changes the weights, so a distill run killed under fp32 is resumed by a second fp32 run but not by a
    bf16 one (each keys its checkpoint by the precision it trains in)."""
    root, p, prep = setup
    cache(root, p, prep)
    q = Params.model_validate(copy.deepcopy(BASE) | {"checkpoint_every": 0})
    q.student.train.epochs = 3
    real_fit = kd.training.fit

    def stop(epoch):
        if epoch == 1:
            raise StopTraining

    def killed_after_epoch_1(*a, **kw):
        if kw.get("desc") == "distill":
            kw["on_epoch_end"] = stop
        return real_fit(*a, **kw)

    with mock.patch.object(kd.distill, "fit", killed_after_epoch_1), pytest.raises(StopTraining):
        distill(prep, root / "teacher", root / "cache", q, tmp_path / "out", tmp_path / "ck")
    bf16 = q.model_copy(update={"amp": "bf16"})
    assert distill(prep, root / "teacher", root / "cache", bf16, tmp_path / "out", tmp_path / "ck")["stages"][0]["resumed_from_epoch"] == 0
    assert distill(prep, root / "teacher", root / "cache", q, tmp_path / "out", tmp_path / "ck")["stages"][0]["resumed_from_epoch"] == 1


def test_stale_cache_is_refused_by_distill(setup):
    root, p, prep = setup
    cache(root, p, prep)
    q = Params.model_validate(copy.deepcopy(BASE) | {"soft_targets": {"dtype": "float32", "top_k": 2}})
    with pytest.raises(soft_targets.CacheError, match="run 'dvc repro soft_targets'"):
        distill(prep, root / "teacher", root / "cache", q, root / "stale")


def test_import_teacher_from_state_dict_torchscript_and_onnx(setup, tmp_path):
    """Imported teachers are stored in formats that hold no code: a state dict checkpoint, or ONNX
    (a TorchScript file is converted once at import)."""
    from kd.export import to_onnx

    root, p, prep = setup
    model, _ = teacher.load_teacher(root / "teacher")
    member = model.members[0]
    torch.save(member.state_dict(), tmp_path / "sd.pt")
    torch.jit.script(member).save(str(tmp_path / "ts.pt"))
    to_onnx(member, prep.x["test"].shape[1], tmp_path / "t.onnx")
    expected = teacher.predict_logp(model, prep.x["test"])
    for fmt, path in (("state_dict", "sd.pt"), ("torchscript", "ts.pt"), ("onnx", "t.onnx")):
        q = Params.model_validate(copy.deepcopy(BASE) | {"teacher": BASE["teacher"] | {"mode": "import", "import_format": fmt, "import_uri": path}})
        summary = teacher.import_teacher(prep, q, tmp_path / fmt, tmp_path / path)
        loaded, _ = teacher.load_teacher(tmp_path / fmt)
        np.testing.assert_allclose(teacher.predict_logp(loaded, prep.x["test"]), expected, rtol=1e-4, atol=1e-5)
        stored = sorted(f.name for f in (tmp_path / fmt).iterdir())
        assert stored == (["member-0.pt", "teacher.json"] if fmt == "state_dict" else ["member-0.onnx", "teacher.json"]), stored
        assert summary["members"][0]["format"] == fmt
    bad = Params.model_validate(copy.deepcopy(BASE) | {"teacher": {"mode": "import", "import_uri": "sd.pt", "model": {"arch": "mlp", "width": 7}}})
    with pytest.raises(ValueError, match="weights do not fit teacher.model mlp"):
        teacher.import_teacher(prep, bad, tmp_path / "bad", tmp_path / "sd.pt")



@pytest.fixture
def one_thread():
    """Small models on a shared 2-core machine: thread hand-offs cost more than they save (3 s vs 30 s under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_dist_from_the_cache_and_crd_online_train_a_student(setup, one_thread):
    """DIST alone (cached targets) teaches the classifier; CRD (teacher online, a memory bank over every
    distillation row) beside the hard-label CE trains a student too, and its own term falls."""
    root, p, prep = setup
    model, targets = cache(root, p, prep)
    q = p.model_copy(deep=True)
    q.student.train.epochs = 30
    q.distill.losses = {"dist": 1.0}
    student, info = distill_one(prep, q.student.model, model, targets, q, seed=0, ckpt=None)
    assert info["source"] == "cache" and info["val_accuracy"] > 0.65  # 4 classes: chance is 0.25 (the teacher: about 0.78)
    assert info["history"][-1]["dist"] < 0.5 * info["history"][0]["dist"]
    torch.manual_seed(0)
    untrained = models.build(q.student.model, prep.input_shape, prep.n_classes)
    assert _agreement(student, model, prep.x["test"]) > _agreement(untrained, model, prep.x["test"]) + 0.3

    q.distill.losses = {"ce": 1.0, "crd": 0.8}
    q.distill.crd_feat_dim = 32
    _, info = distill_one(prep, q.student.model, model, None, q, seed=0, ckpt=None)
    assert info["source"] == "online" and info["val_accuracy"] > 0.65
    assert info["history"][-1]["crd"] < 0.8 * info["history"][0]["crd"]


def test_crd_resumes_exactly_because_its_banks_are_checkpointed(setup, tmp_path, one_thread):
    """A run killed after epoch 2 and resumed ends with the same weights: the memory banks and log Z come back
    from the checkpoint (as buffers of the loss module, trained beside the student), the negatives' RNG too."""
    root, p, prep = setup
    model, _ = teacher.load_teacher(root / "teacher")
    q = p.model_copy(deep=True)
    q.student.train.epochs = 4
    q.distill.losses = {"ce": 1.0, "crd": 0.8}
    q.distill.crd_feat_dim = 16
    full, _ = distill_one(prep, q.student.model, model, None, q, seed=0, ckpt=tmp_path / "a.pt")

    def stop(epoch):
        if epoch == 2:
            raise StopTraining

    real_fit = kd.distill.fit
    with mock.patch.object(kd.distill, "fit", lambda *a, **kw: real_fit(*a, on_epoch_end=stop, **kw)), pytest.raises(StopTraining):
        distill_one(prep, q.student.model, model, None, q, seed=0, ckpt=tmp_path / "b.pt")
    resumed, _ = distill_one(prep, q.student.model, model, None, q, seed=0, ckpt=tmp_path / "b.pt")
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_scratch_without_views_or_transfer_is_the_plain_hard_label_run(setup):
    """With one view and no transfer set, the compute-matched baseline is exactly the classic one."""
    _, p, prep0 = setup
    prep = dataclasses.replace(prep0, x_transfer=None)
    q = p.model_copy(deep=True)
    q.student.train.epochs = 3
    scratch, _ = train_scratch(prep, q, seed=0)
    torch.manual_seed(0)
    plain = models.build(q.student.model, prep.input_shape, prep.n_classes)
    fit(plain, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
        (prep.x["val"], prep.y["val"]), q.student.train, 0)
    for k, v in scratch.state_dict().items():
        torch.testing.assert_close(v, plain.state_dict()[k], rtol=0, atol=0)


def test_scratch_takes_as_many_steps_as_the_student(setup, monkeypatch):
    """The student's epoch covers training + transfer rows; the scratch baseline must take as many
    optimiser steps (labelled rows cycled), never the transfer rows."""
    _, p, prep = setup
    q = p.model_copy(deep=True)
    q.student.train.epochs, q.student.train.batch_size = 2, 64
    n_train, n_transfer = len(prep.y["train"]), len(prep.x_transfer)
    seen = []

    def spy(model, batch):
        seen.append(batch["y"].numpy())
        return cross_entropy_loss(model, batch)

    monkeypatch.setattr(distill_module, "cross_entropy_loss", spy)
    train_scratch(prep, q, seed=0)
    assert n_transfer == 300 and len(seen) == 2 * -(-(n_train + n_transfer) // 64)  # ceil, per epoch
    labels = np.concatenate(seen)
    assert len(labels) == 2 * (n_train + n_transfer) and (labels >= 0).all()  # every row labelled


def test_scratch_sees_the_students_augmented_views(setup):
    """Compute-matched means the same augmentation: without a transfer set the scratch baseline's inputs are
    the very views the student's cache was built on, and mixed inputs carry mixup's label."""
    _, _, prep0 = setup
    prep = dataclasses.replace(prep0, x_transfer=None)
    p = Params.model_validate(copy.deepcopy(BASE) | {"soft_targets": {"dtype": "float32", "views": 4, "augment": {"mixup_alpha": 1.0}}})
    vp = augment.view_params(len(prep.y["train"]), 4, p.soft_targets.augment, p.seed)
    batch = scratch_batches(prep.x["train"], prep.y["train"], len(prep.y["train"]), vp, 4, 0.0, seed=3)
    idx = np.arange(40)
    got = batch(idx, 5)
    view = EpochViews(3, len(prep.y["train"]), 4)(5, idx)  # the student's views of the same epoch and seed
    lam = vp["lam"][idx, view]
    partner = vp["partner"][idx, view]
    expected = lam[:, None] * prep.x["train"][idx] + (1 - lam[:, None]) * prep.x["train"][partner]
    np.testing.assert_allclose(got["x"].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert (lam < 1).sum() > 20 and np.array_equal(got["y_mix"].numpy(), prep.y["train"][partner])
    np.testing.assert_array_equal(got["lam"].numpy(), lam)
