"""The training loop: resume after a kill reaches the same weights; distillation teaches the student."""

import pytest
import torch

from kd import models
from kd.config import DataParams, ModelSpec, Params, SyntheticParams, TrainParams
from kd.data import prepare, split
from kd.distributed import Runtime
from kd.sources import load_source
from kd.training import StopTraining, accuracy, cross_entropy_loss, fit, hard_label_batches


@pytest.fixture(scope="module")
def prep():
    p = DataParams(source="synthetic", synthetic=SyntheticParams(n_samples=600, n_features=8, n_classes=3, class_sep=2.0))
    return prepare(split(load_source(p), p, 0), p)


def _train(prep, ckpt, stop_at=None, every=0.0, epochs=6):
    torch.manual_seed(0)
    m = models.build(ModelSpec(arch="mlp", width=16, dropout=0.2), prep.input_shape, prep.n_classes)

    def stop(epoch):
        if epoch == stop_at:
            raise StopTraining

    res = fit(m, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
              (prep.x["val"], prep.y["val"]), TrainParams(epochs=epochs, batch_size=32), seed=3, ckpt=ckpt, on_epoch_end=stop,
              rt=Runtime(checkpoint_every=every))
    return m, res


def test_killed_and_resumed_run_matches_uninterrupted(prep, tmp_path):
    full, res_full = _train(prep, tmp_path / "a.pt")
    with pytest.raises(StopTraining):
        _train(prep, tmp_path / "b.pt", stop_at=3)
    resumed, res = _train(prep, tmp_path / "b.pt")
    assert res.resumed_from == 3 and res.epochs_run == 6
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert res.history == res_full.history


def test_checkpoints_follow_the_interval_and_the_last_epoch_is_always_kept(prep, tmp_path):
    """checkpoint_every: a run killed before the interval has passed left no checkpoint and starts over; the last
    epoch is written whatever the interval; the setting is runtime (outside the config hash)."""
    with pytest.raises(StopTraining):
        _train(prep, tmp_path / "a.pt", stop_at=4, every=3600)
    assert not (tmp_path / "a.pt").exists()
    _, res = _train(prep, tmp_path / "a.pt", every=3600, epochs=3)
    assert res.resumed_from == 0 and (tmp_path / "a.pt").exists()
    _, res = _train(prep, tmp_path / "a.pt", every=3600, epochs=3)
    assert res.resumed_from == 3 and res.epochs_run == 3  # the final checkpoint: nothing left to train
    assert Params(checkpoint_every=5).section_hash() == Params().section_hash()


def test_training_learns_and_early_stopping_stops(prep):
    torch.manual_seed(0)
    m = models.build(ModelSpec(arch="mlp", width=16), prep.input_shape, prep.n_classes)
    before = accuracy(m, prep.x["test"], prep.y["test"])
    res = fit(m, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
              (prep.x["val"], prep.y["val"]), TrainParams(epochs=200, patience=2, lr=0.05), seed=0)
    assert accuracy(m, prep.x["test"], prep.y["test"]) > max(before + 0.2, 0.8)
    assert res.epochs_run < 200 and res.epochs_run - res.best_epoch == 3
