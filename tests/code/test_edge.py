"""The edge bundle (kd.edge) against the independent Python path: `Preprocessor.features` fed to
`kd.export.OnnxModel` of the same student file (fp32 and int8), softmax and argmax in numpy."""

import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from kd import models
from kd.config import DataParams, ModelSpec
from kd.data import Preprocessor
from kd.edge import EdgeModel, build_edge_model
from kd.export import OnnxModel, quantize_int8, to_onnx

CLASSES = ["low", "mid", "high"]  # deliberately not sorted: the label order comes from the preprocessor


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    age = rng.integers(18, 80, n)
    income = rng.normal(5e4, 2e4, n)
    color = rng.choice(["red", "green", "blue"], n)
    city = rng.choice([1, 2, 3, 4], n)  # integers, compared as strings ("1", ...)
    score = income / 2e4 + (color == "red") * 1.5 - (city == 3) - (age - 50) / 30
    y = np.asarray(CLASSES)[np.digitize(score, [1.5, 3.0])]
    return pd.DataFrame({"age": age, "color": color, "income": income, "city": city, "y": y})


def _student(x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...], n_classes: int, dir_) -> tuple:
    """A tiny mlp trained briefly (so class margins are real), exported fp32 and int8."""
    torch.manual_seed(0)
    model = models.build(ModelSpec(arch="mlp", width=16, depth=1), input_shape, n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    fp32 = to_onnx(model, x.shape[1], dir_ / "student.onnx")
    return fp32, quantize_int8(fp32, dir_ / "student.int8.onnx")


def _python_path(pre: Preprocessor, student, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    logits = OnnxModel(student, threads=1)(pre.features(frame, "test")).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return np.asarray(pre.classes)[logits.argmax(1)], p / p.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    rng = np.random.default_rng(0)
    train = _frame(rng, 600)
    pre = Preprocessor.fit(train, ["age", "color", "income", "city"], "y",
                           DataParams(categorical_columns=["color", "city"], classes=CLASSES))
    test = _frame(rng, 400)
    test.loc[:19, "color"] = "purple"  # unseen categories: all-zero one-hot blocks
    test.loc[10:29, "city"] = 9
    test.loc[30:39, "color"] = np.nan  # "nan" as a string, also unseen
    test.loc[40:49, "age"] = [150, -40, 0, 999, 120, 200, -5, 300, 101, 90]  # outside the training range
    test.loc[45:59, "income"] = np.linspace(-3e5, 1e6, 15)
    dir_ = tmp_path_factory.mktemp("edge_tabular")
    students = dict(zip(("fp32", "int8"), _student(pre.features(train, "train"), pre.labels(train, "y", "train"), (len(pre.feature_names),),
                                                       len(CLASSES), dir_)))
    return pre, test, students, dir_


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_tabular_bundle_matches_the_python_path(tabular, kind):
    pre, test, students, dir_ = tabular
    bundle = build_edge_model(pre, students[kind], dir_ / f"edge.{kind}.onnx")
    labels, probs = EdgeModel(bundle, threads=1).predict(test)
    want_labels, want_probs = _python_path(pre, students[kind], test)
    assert len(set(want_labels)) == len(CLASSES)  # the student separates the classes, so label agreement means something
    assert probs.shape == (len(test), len(CLASSES)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, want_probs, atol=1e-5 if kind == "fp32" else 1e-4)
    agree = labels == want_labels
    assert agree.all() if kind == "fp32" else agree.mean() >= 0.995
    special = np.r_[0:60]  # unseen categories, NaN category, out-of-range numbers
    assert (pre.features(test.iloc[special], "t")[:, 2:5].sum(1) == 0).sum() >= 30  # the rows do exercise all-zero blocks
    np.testing.assert_allclose(probs[special], want_probs[special], atol=1e-5 if kind == "fp32" else 1e-4)
    assert (labels[special] == want_labels[special]).mean() >= (1.0 if kind == "fp32" else 0.95)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data = load_digits()
    cols = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    frame = pd.DataFrame(data.data, columns=cols).assign(label=data.target.astype(str))
    train, test = frame.iloc[:1200].reset_index(drop=True), frame.iloc[1200:].reset_index(drop=True).copy()
    pre = Preprocessor.fit(train, cols, "label", DataParams())
    constant = [c for c, s in zip(pre.numeric, pre.std) if s == 1.0]
    assert constant and all(train[c].nunique() == 1 for c in constant)  # std set to 1 for these columns
    test.loc[:9, constant[0]] = 7.0  # a pixel never lit in training, and values past 16
    test.loc[5:14, "pixel_3_3"] = 40.0
    dir_ = tmp_path_factory.mktemp("edge_digits")
    students = dict(zip(("fp32", "int8"), _student(pre.features(train, "train"), pre.labels(train, "label", "train"), (1, 8, 8), 10, dir_)))
    return pre, test, students, dir_


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_digits_numeric_only_bundle_with_constant_columns(digits, kind):
    pre, test, students, dir_ = digits
    labels, probs = EdgeModel(build_edge_model(pre, students[kind], dir_ / f"edge.{kind}.onnx"), threads=1).predict(test)
    want_labels, want_probs = _python_path(pre, students[kind], test)
    assert (want_labels == test["label"]).mean() > 0.8  # a real student
    np.testing.assert_allclose(probs, want_probs, atol=1e-5 if kind == "fp32" else 1e-4)
    assert (labels == want_labels).all() if kind == "fp32" else (labels == want_labels).mean() >= 0.995


def test_missing_or_non_numeric_column_is_named(tabular):
    pre, test, students, dir_ = tabular
    model = EdgeModel(build_edge_model(pre, students["fp32"], dir_ / "edge.errors.onnx"))
    with pytest.raises(ValueError, match=r"missing feature column\(s\) \['city'\]"):
        model.predict(test.drop(columns="city"))
    with pytest.raises(ValueError, match=r"missing feature column\(s\) \['income'\]"):
        model.predict(test.drop(columns="income"))
    bad = test.astype({"income": object})
    bad.loc[3, "income"] = "n/a"
    with pytest.raises(ValueError, match="column 'income' must be numeric but holds 'n/a'"):
        model.predict(bad)
    with pytest.raises(ValueError, match="column 'age' must be numeric but holds booleans"):
        model.predict(test.assign(age=test["age"] > 50))


def test_the_file_alone_is_enough(tabular, tmp_path):
    pre, test, students, dir_ = tabular
    alone = tmp_path / "elsewhere" / "bundle.onnx"
    alone.parent.mkdir()
    shutil.copy(build_edge_model(pre, students["int8"], dir_ / "edge.alone.onnx"), alone)
    model = EdgeModel(alone)
    assert model.classes == CLASSES
    assert model.columns == ["age", "income", "color", "city"]  # numeric first, then categorical, as the features are laid out
    assert model.kinds == {"age": "numeric", "income": "numeric", "color": "categorical", "city": "categorical"}
    assert model.categories == {"color": ["blue", "green", "red"], "city": ["1", "2", "3", "4"]}
    inputs = {i.name: (i.type, i.shape[1]) for i in model.session.get_inputs()}
    assert inputs == {"age": ("tensor(float)", 1), "income": ("tensor(float)", 1), "color": ("tensor(string)", 1), "city": ("tensor(string)", 1)}
    assert [o.name for o in model.session.get_outputs()] == ["label", "probabilities"]
    imports = [(o.domain, o.version) for o in onnx.load(alone).opset_import]
    assert sorted(imports) == [("", 17), ("ai.onnx.ml", 3)]  # the student's opset, one entry per domain
    labels, _ = model.predict(test)
    assert (labels == _python_path(pre, students["int8"], test)[0]).mean() >= 0.995


def test_a_plain_student_file_is_not_a_bundle(tabular):
    _, _, students, _ = tabular
    with pytest.raises(ValueError, match="not a kd edge bundle"):
        EdgeModel(students["fp32"])
