"""Loading never executes code: every file kd reads back (model checkpoints, training checkpoints, teacher
members, an imported state dict) is loaded with weights_only=True, and a crafted pickle is refused before
any of it runs."""

import os

import pytest
import torch

from kd import models, teacher
from kd.config import ModelSpec, TrainParams
from kd.models import UnsafeFileError


class _Payload:
    """Unpickling this runs os.system — what a malicious file from a DVC remote would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(path, marker):
    """A file torch.load(weights_only=False) would happily execute."""
    torch.save({"spec": {"arch": "mlp"}, "state_dict": _Payload(marker)}, path)
    return path


def test_the_payload_is_real(tmp_path):
    """The check below is meaningful: unrestricted unpickling does run the payload."""
    marker = tmp_path / "pwned"
    with open(_malicious(tmp_path / "evil.pt", marker), "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_model_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeFileError, match="refused to load: not a plain weights file"):
        models.load(_malicious(tmp_path / "model.pt", marker))
    assert not marker.exists()


def test_teacher_member_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "t").mkdir()
    _malicious(tmp_path / "t" / "member-0.pt", marker)
    (tmp_path / "t" / "teacher.json").write_text('{"n_members": 1, "combine": "logits"}')
    with pytest.raises(UnsafeFileError):
        teacher.load_teacher(tmp_path / "t")
    assert not marker.exists()


def test_training_checkpoint_is_refused_on_resume(tmp_path):
    import numpy as np

    from kd.training import cross_entropy_loss, fit, hard_label_batches

    marker = tmp_path / "pwned"
    ckpt = _malicious(tmp_path / "resume.pt", marker)
    model = models.build(ModelSpec(arch="mlp", width=4, depth=1), (3,), 2)
    x, y = np.zeros((8, 3), np.float32), np.zeros(8, np.int64)
    with pytest.raises(UnsafeFileError):
        fit(model, 8, hard_label_batches(x, y), cross_entropy_loss, (x, y), TrainParams(epochs=1), 0, ckpt)
    assert not marker.exists()


def test_plain_weights_still_load(tmp_path):
    model = models.build(ModelSpec(arch="mlp", width=4, depth=1), (3,), 2)
    models.save(model, ModelSpec(arch="mlp", width=4, depth=1), (3,), ["a", "b"], tmp_path / "ok.pt")
    loaded, saved = models.load(tmp_path / "ok.pt")
    assert saved["classes"] == ["a", "b"] and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_no_kd_module_loads_with_weights_only_false():
    from pathlib import Path

    kd = Path(__file__).resolve().parents[2] / "kd"
    offenders = [p.name for p in kd.rglob("*.py") if "weights_only=False" in p.read_text() or "pickle.load" in p.read_text()]
    assert offenders == []
