"""Mixed precision (`amp`): the setting validates and stays out of the config hash, fp16 on the CPU is refused
with one message, and bf16 autocast on the CPU (asked for explicitly) trains a toy problem about as well."""

import pytest
import torch

from kd import models
from kd.config import ConfigError, DataParams, ModelSpec, SyntheticParams, TrainParams, parse_params
from kd.data import prepare, split
from kd.distributed import Runtime, amp_dtype, runtime
from kd.sources import load_source
from kd.training import accuracy, cross_entropy_loss, fit, hard_label_batches


def test_amp_validates_and_is_a_runtime_setting():
    with pytest.raises(ConfigError, match="amp"):
        parse_params({"amp": "fp8"})
    with pytest.raises(ConfigError) as err:
        parse_params({"device": "cpu", "amp": "fp16"})
    assert str(err.value).count("fp16 needs a CUDA device") == 1
    assert parse_params({"amp": "bf16"}).section_hash() == parse_params({}).section_hash()  # not what a model is


def test_amp_dtype_on_the_cpu():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None  # off on the CPU unless asked
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        runtime("cpu", amp="fp16")  # device auto resolving to the CPU is caught when the stage starts
    assert Runtime(amp="fp16", device=torch.device("cuda")).amp_dtype is torch.float16  # no GPU needed to resolve it


@pytest.fixture(scope="module")
def prep():
    p = DataParams(source="synthetic", synthetic=SyntheticParams(n_samples=800, n_features=8, n_classes=3, class_sep=2.0))
    return prepare(split(load_source(p), p, 0), p)


def _train(prep, amp: str):
    torch.manual_seed(0)
    m = models.build(ModelSpec(arch="mlp", width=32, depth=1), prep.input_shape, prep.n_classes)
    seen = []

    def loss(model, batch):
        out = cross_entropy_loss(model, batch)
        seen.append(model(batch["x"]).dtype)  # the dtype the forward pass computes in, inside fit's autocast
        return out

    fit(m, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), loss,
        (prep.x["val"], prep.y["val"]), TrainParams(epochs=5, batch_size=32), seed=0, rt=Runtime(amp=amp))
    return accuracy(m, prep.x["test"], prep.y["test"]), set(seen), m


def test_bf16_autocast_on_the_cpu_trains_about_as_well(prep):
    acc32, dtypes32, m32 = _train(prep, "off")
    acc16, dtypes16, m16 = _train(prep, "bf16")
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}  # autocast was on only when asked
    assert next(m16.parameters()).dtype is torch.float32  # the weights stay fp32 (autocast casts the compute only)
    assert acc32 > 0.8 and abs(acc16 - acc32) <= 0.05
