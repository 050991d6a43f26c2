"""Architectures by name and by import path, sizes, and the ensemble teacher's combination rule."""

import pytest
import torch
from torch import nn

from kd import models
from kd.config import ModelSpec
from kd.teacher import Teacher


@pytest.mark.parametrize("arch", ["mlp", "cnn1d", "cnn2d", "resnet"])
def test_builtins_take_flat_inputs_and_report_size(arch):
    m = models.build(ModelSpec(arch=arch, width=8, depth=2), (1, 8, 8), 10)
    assert m(torch.randn(3, 64)).shape == (3, 10)
    assert models.param_count(m) == sum(p.numel() for p in m.parameters()) > 0
    assert models.serialized_bytes(m) > 4 * models.param_count(m)
    assert "features" in dict(m.named_modules())


def test_wider_means_more_parameters():
    small = models.build(ModelSpec(arch="mlp", width=8), (20,), 3)
    big = models.build(ModelSpec(arch="mlp", width=64), (20,), 3)
    assert models.param_count(big) > models.param_count(small)


def test_image_architectures_reject_tabular_inputs():
    with pytest.raises(ValueError, match="needs image inputs"):
        models.build(ModelSpec(arch="cnn2d"), (12,), 2)


def factory(input_shape, n_classes, width, depth, dropout):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], n_classes))


def test_user_factory_by_import_path_and_bad_path():
    m = models.build(ModelSpec(arch="tests.code.test_models:factory"), (5,), 3)
    assert m(torch.randn(2, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="cannot import 'nope'"):
        models.build(ModelSpec(arch="tests.code.test_models:nope"), (5,), 3)


def test_save_load_round_trip(tmp_path):
    m = models.build(ModelSpec(arch="cnn1d", width=4), (6,), 2)
    models.save(m, ModelSpec(arch="cnn1d", width=4), (6,), ["a", "b"], tmp_path / "m.pt")
    loaded, saved = models.load(tmp_path / "m.pt")
    x = torch.randn(4, 6)
    m.eval()
    assert torch.equal(loaded(x), m(x)) and saved["classes"] == ["a", "b"]
    assert models.state_hash([m.state_dict()]) == models.state_hash([loaded.state_dict()])


def test_ensemble_averages_logits_or_probabilities():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    by_logits = Teacher([a, b], "logits")(x)
    assert torch.allclose(by_logits, ((a(x) + b(x)) / 2).log_softmax(1))
    by_probs = Teacher([a, b], "probs")(x)
    assert torch.allclose(by_probs.exp(), (a(x).softmax(1) + b(x).softmax(1)) / 2, atol=1e-6)
