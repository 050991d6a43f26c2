"""Text distillation: the text source, the tokenizer as the preprocessing, the pretrained encoder, DistilBERT's
layer initialisation and cosine loss, the tiny embedding-bag student, and the bundle (raw text in, torch and
ONNX int8 alike). Tiny configurations: a few dozen rows, 16 tokens."""

import numpy as np
import pandas as pd
import pytest
import torch
from toy_text import toy_reviews

from kd import models
from kd.config import ConfigError, ModelSpec, Params, parse_params
from kd.data import prepare, split
from kd.losses.cosine import HiddenCosine
from kd.sources import DataError, load_source
from kd.text import encode
from kd.training import accuracy, cross_entropy_loss, fit, hard_label_batches


def text_params(path, **student) -> Params:
    return parse_params({
        "data": {"source": f"text:{path}", "max_length": 16},
        "teacher": {"model": {"arch": "minilm", "layers": 2, "tune_layers": 1}},
        "student": {"model": {"arch": "embbag", "width": 16, "depth": 1, **student}, "train": {"epochs": 30, "lr": 0.02}},
    })


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    toy_reviews(160).to_csv(path, index=False)
    p = text_params(path)
    prep = prepare(split(load_source(p.data), p.data, p.seed), p.data)
    return path, p, prep


def test_text_source_reads_the_text_column_and_refuses_bad_input(tmp_path, toy):
    path, p, prep = toy
    assert prep.x["train"].dtype == np.int64 and prep.x["train"].shape[1] == 16
    assert prep.input_shape == (16,) and prep.classes == ["great", "other"]
    assert prep.preprocessor.text["column"] == "text" and len(prep.preprocessor.text["sha256"]) == 16
    with pytest.raises(ConfigError, match="expected text:PATH to a .csv or .parquet"):
        parse_params({"data": {"source": "text:reviews.txt"}})
    with pytest.raises(ConfigError, match="student.model.arch 'mlp' does not fit"):
        parse_params({"data": {"source": f"text:{path}"}, "teacher": {"model": {"arch": "minilm"}}})
    with pytest.raises(ConfigError, match="'minilm_layers' copies every other layer"):
        parse_params({"data": {"source": f"text:{path}"}, "teacher": {"model": {"arch": "embbag"}}, "student": {"model": {"arch": "minilm_layers"}}})
    other = tmp_path / "other.csv"
    toy_reviews(20).rename(columns={"text": "review"}).to_csv(other, index=False)
    with pytest.raises(DataError, match="missing text column 'text'.*data.text_column"):
        load_source(text_params(other).data)


def test_tokenizer_is_bert_uncased_wordpiece_and_deterministic():
    ids = encode(["Hello world", "hello WORLD " * 40], 8)
    # [CLS]=101 hello=7592 world=2088 [SEP]=102 in BERT's uncased vocabulary; [PAD]=0
    assert ids[0].tolist() == [101, 7592, 2088, 102, 0, 0, 0, 0]
    assert ids[1].tolist() == [101, 7592, 2088, 7592, 2088, 7592, 2088, 102]  # truncated, [SEP] kept
    assert np.array_equal(ids, encode(["Hello world", "hello WORLD " * 40], 8))


def test_encoder_matches_transformers_bert_on_the_same_weights():
    from transformers import BertConfig, BertModel

    from kd.text import bert_config, offline, pretrained_weights

    offline()
    model = models.build(ModelSpec(arch="minilm", layers=2), (16,), 2).eval()
    cfg = BertConfig(**(bert_config() | {"num_hidden_layers": 2}))
    hf = BertModel(cfg, add_pooling_layer=False).eval()
    hf.load_state_dict({k: v for k, v in pretrained_weights().items() if not k.startswith(("pooler", "encoder.layer.2", "encoder.layer.3",
                                                                                           "encoder.layer.4", "encoder.layer.5"))}, strict=False)
    ids = torch.from_numpy(encode(["a cup of tea", "the best chai I have ever had, truly"], 16))
    with torch.no_grad():
        ours = model.features(ids)
        theirs = hf(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    real = ids != 0
    assert torch.allclose(ours[real], theirs[real], atol=1e-4)


def test_student_copies_exactly_layers_0_2_4_of_the_teacher():
    teacher = models.build(ModelSpec(arch="minilm"), (16,), 2)
    with torch.no_grad():  # a teacher that differs from the pretrained weights (as a fine-tuned one does)
        for i, p in enumerate(teacher.parameters()):
            p.add_(0.01 * (i + 1))
    student = models.build(ModelSpec(arch="minilm_layers"), (16,), 2)
    assert len(student.features.layers) == 3
    student.init_from_teacher(teacher)
    for j, i in enumerate((0, 2, 4)):
        for (name, s), (_, t) in zip(student.features.layers[j].state_dict().items(), teacher.features.layers[i].state_dict().items()):
            assert torch.equal(s, t), (j, i, name)
    assert not torch.equal(student.features.layers[1].query.weight, teacher.features.layers[1].query.weight)
    assert torch.equal(student.features.embeddings.word.weight, teacher.features.embeddings.word.weight)
    assert torch.equal(student.head.weight, teacher.head.weight)


def test_freezing_trains_only_the_top_layers():
    model = models.build(ModelSpec(arch="minilm", tune_layers=2), (16,), 2)
    trains = {n.split(".")[2] if n.startswith("features.layers") else n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {"4", "5", "weight", "bias"}  # layers 4 and 5, the head's weight and bias


def test_cosine_loss_known_values():
    loss = HiddenCosine()
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = torch.tensor([[3.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # 1 - cos: 0 (same direction), 1 (orthogonal), 1 - 1/sqrt(2); mean over the three
    expect = (0 + 1 + (1 - 2**-0.5)) / 3
    assert loss({"student_feat": s, "teacher_feat": t}).item() == pytest.approx(expect, abs=1e-6)
    # per token (B=1, L=3, H=2), the third token padding: only the first two count
    s3, t3 = s.unsqueeze(0), t.unsqueeze(0)
    mask = torch.tensor([[True, True, False]])
    assert loss({"student_feat": s3, "teacher_feat": t3, "mask": mask}).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        loss({"student_feat": torch.ones(2, 3), "teacher_feat": torch.ones(2, 4)})


def test_embedding_bag_learns_a_separable_toy_text_set(toy):
    _, p, prep = toy
    torch.manual_seed(0)
    model = models.build(p.student.model, prep.input_shape, prep.n_classes)
    fit(model, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
        (prep.x["val"], prep.y["val"]), p.student.train, 0)
    assert accuracy(model, prep.x["test"], prep.y["test"]) >= 0.9  # chance is 0.5


def test_text_cnn_learns_and_ignores_the_padding_after_a_review(toy):
    """Kim (2014)'s CNN: the same review padded to 16 tokens or cut right after its [SEP] gives the same
    logits (pad embeddings and the convolution's padding are both zero; the max skips pad positions)."""
    _, p, prep = toy
    torch.manual_seed(0)
    model = models.build(ModelSpec(arch="textcnn", width=16), prep.input_shape, prep.n_classes)
    fit(model, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
        (prep.x["val"], prep.y["val"]), p.student.train.model_copy(update={"epochs": 10}), 0)
    assert accuracy(model, prep.x["test"], prep.y["test"]) >= 0.9  # chance is 0.5
    ids = torch.from_numpy(encode(["great tea", "the soggy snack was really awful and stale"], 16))
    model.eval()
    with torch.no_grad():
        for row in ids:
            n = int((row != 0).sum())
            assert n < 16 and torch.allclose(model(row[None]), model(row[None, :n]), atol=1e-6)
        # and not vacuously: two reviews differ
        assert not torch.allclose(model(ids[:1]), model(ids[1:]))


@pytest.mark.parametrize("arch", ["embbag", "textcnn", "minilm_layers"])
def test_bundle_predicts_raw_text_and_onnx_int8_matches_torch(tmp_path, toy, arch):
    from kd.bundle import write_student_bundle
    from kd.predictor import Predictor

    _, p, prep = toy
    spec = ModelSpec(arch=arch, width=16, layers=2)
    torch.manual_seed(0)
    model = models.build(spec, prep.input_shape, prep.n_classes)
    fit(model, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
        (prep.x["val"], prep.y["val"]), p.student.train.model_copy(update={"epochs": 1 if arch == "minilm_layers" else 3}), 0)
    models.save(model, spec, prep.input_shape, prep.classes, tmp_path / "model.pt")
    prep.meta.update(label_column="label", sensitive_columns=[])
    out = write_student_bundle(tmp_path / "bundle", tmp_path / "model.pt", prep, True, pd.DataFrame({"x": [1]}), {})
    assert not (out / "edge.onnx").exists()
    rows = toy_reviews(40, seed=7)[["text"]]
    torch_labels, torch_probs = Predictor(out, "torch").predict(rows)
    ids = encode(rows["text"].tolist(), 16)
    with torch.no_grad():
        direct = model.eval()(torch.from_numpy(ids)).softmax(1).numpy()
    assert np.allclose(torch_probs, direct, atol=1e-5)  # raw text in = tokenizer + model
    for backend in ("onnx", "onnx_int8"):
        labels, probs = Predictor(out, backend).predict(rows)
        agree = np.mean(np.array(labels) == np.array(torch_labels))
        assert agree >= (1.0 if backend == "onnx" else 0.9), (backend, agree)


def test_distilbert_student_distils_online_with_kd_and_cosine(toy):
    """minilm_layers under a minilm teacher through kd.distill: initialised from the teacher's layers, the
    cosine term read from the hooked hidden states of both (pad tokens masked)."""
    from kd.distill import distill_one
    from kd.teacher import Teacher

    _, p, prep = toy
    p = p.model_copy(deep=True)
    p.distill.losses = {"kd": 1.0, "cos": 1.0}
    p.student.train.epochs, p.student.train.lr = 1, 1e-4
    spec = ModelSpec(arch="minilm_layers", layers=2)
    torch.manual_seed(0)
    member = models.build(ModelSpec(arch="minilm", layers=2), prep.input_shape, prep.n_classes).eval()
    teacher = Teacher([member]).eval()
    student, info = distill_one(prep, spec, teacher, None, p, seed=0, ckpt=None)
    epoch = info["history"][0]
    assert info["source"] == "online" and set(epoch) >= {"kd", "cos"}
    assert 0 < epoch["cos"] < 1  # started from the teacher's layer 0: states already close, never orthogonal
    assert len(student.features.layers) == 1
