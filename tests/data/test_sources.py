"""Every data adapter: what it loads, and its error on bad input."""

import numpy as np
import pandas as pd
import pytest

from kd.config import DataParams, SyntheticParams
from kd.data import prepare, split
from kd.sources import DataError, load_source


def _prep(p, base=None, seed=0):
    return prepare(split(load_source(p, base), p, seed), p)


def test_digits_is_embedded_and_split_stratified_deterministically():
    p = DataParams()
    a, b = _prep(p), _prep(p)
    assert a.input_shape == (1, 8, 8) and a.n_classes == 10
    np.testing.assert_array_equal(a.x["test"], b.x["test"])
    assert sum(len(a.y[s]) for s in ("train", "val", "test")) == 1797
    counts = np.bincount(a.y["test"], minlength=10)
    assert counts.min() >= 33  # stratified: ~36 per class in a 360-row test split
    assert not np.array_equal(_prep(p, seed=1).x["test"], a.x["test"])


def _csv(tmp_path, df, name="d.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _frame(n=120):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "colour": rng.choice(["red", "blue"], n),
                         "sex": rng.choice(["f", "m"], n), "label": rng.integers(0, 2, n)})


def test_csv_and_parquet_with_categorical_and_sensitive_columns(tmp_path):
    df = _frame()
    _csv(tmp_path, df)
    df.to_parquet(tmp_path / "d.parquet")
    for src in ("csv:d.csv", "parquet:d.parquet"):
        p = DataParams(source=src, categorical_columns=["colour"], sensitive_columns=["sex"])
        prep = _prep(p, tmp_path)
        assert prep.feature_names == ["a", "b", "colour=blue", "colour=red"]  # sex excluded from features
        assert set(prep.groups["test"]["sex"]) == {"f", "m"}
        # scaling fitted on the training split only
        assert abs(prep.x["train"][:, 0].mean()) < 1e-6 and abs(prep.x["test"][:, 0].mean()) > 1e-6
    p = DataParams(source="csv:d.csv", categorical_columns=["colour", "sex"], sensitive_columns=["sex"], sensitive_as_features=True)
    assert "sex=f" in _prep(p, tmp_path).feature_names


def test_missing_label_column(tmp_path):
    _csv(tmp_path, _frame().drop(columns="label"))
    with pytest.raises(DataError, match="missing label column 'label'"):
        load_source(DataParams(source="csv:d.csv"), tmp_path)


def test_nan_in_feature_names_the_column(tmp_path):
    df = _frame()
    df.loc[3, "b"] = np.nan
    _csv(tmp_path, df)
    with pytest.raises(DataError, match="column 'b' has 1 missing value"):
        _prep(DataParams(source="csv:d.csv", categorical_columns=["colour", "sex"]), tmp_path)


def test_string_in_numeric_column_names_column_and_value(tmp_path):
    df = _frame().astype({"a": object})
    df.loc[5, "a"] = "oops"
    _csv(tmp_path, df)
    with pytest.raises(DataError, match="column 'a' must be numeric but holds 'oops'"):
        _prep(DataParams(source="csv:d.csv", categorical_columns=["colour", "sex"]), tmp_path)


def test_unknown_file_type_empty_file_and_missing_file(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        load_source(DataParams(source="csv:d.xlsx"), tmp_path)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="e.csv: the file is empty"):
        load_source(DataParams(source="csv:e.csv"), tmp_path)
    with pytest.raises(DataError, match="file not found"):
        load_source(DataParams(source="parquet:nope.parquet"), tmp_path)


def test_label_outside_known_set(tmp_path):
    _csv(tmp_path, _frame())
    p = DataParams(source="csv:d.csv", categorical_columns=["colour", "sex"], classes=["0"])
    with pytest.raises(DataError, match=r"label column 'label' has value\(s\) \['1'\] outside the known set"):
        _prep(p, tmp_path)


def test_npz_with_fixed_splits_transfer_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(100, 1, 4, 4)).astype(np.float32), "y_train": rng.integers(0, 3, 100),
              "x_test": rng.normal(size=(30, 1, 4, 4)).astype(np.float32), "y_test": rng.integers(0, 3, 30),
              "x_transfer": rng.normal(size=(40, 1, 4, 4)).astype(np.float32)}
    np.savez(tmp_path / "d.npz", **arrays)
    prep = _prep(DataParams(source="npz:d.npz"), tmp_path)
    assert prep.input_shape == (1, 4, 4) and len(prep.y["test"]) == 30 and prep.x_transfer.shape == (40, 16)
    assert len(prep.distill_inputs()) == len(prep.y["train"]) + 40 and (prep.distill_labels()[-40:] == -1).all()
    np.savez(tmp_path / "bad.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(DataError, match=r"missing array\(s\) \['x_test', 'y_test'\]"):
        load_source(DataParams(source="npz:bad.npz"), tmp_path)
    np.savez(tmp_path / "shape.npz", **(arrays | {"x_test": arrays["x_test"][:, :, :2]}))
    with pytest.raises(DataError, match="x_test has shape"):
        load_source(DataParams(source="npz:shape.npz"), tmp_path)


def test_synthetic_knobs_overlap_bias_and_shift():
    base = SyntheticParams(n_samples=2000, n_features=6, n_classes=3, n_transfer=500)
    raw = load_source(DataParams(source="synthetic", synthetic=base))
    assert raw.sensitive == ["group"] and len(raw.transfer_frame()) == 500
    biased = load_source(DataParams(source="synthetic", synthetic=base.model_copy(update={"group_bias": 0.8}))).frame
    b = biased[biased.group == "b"]
    assert (b.label == 0).mean() > 0.8  # group b's labels pushed to class 0
    shifted = load_source(DataParams(source="synthetic", synthetic=base.model_copy(update={"transfer_shift": 2.0}))).transfer_frame()
    assert shifted.to_numpy().mean() - raw.transfer_frame().to_numpy().mean() == pytest.approx(2.0, abs=0.1)


def test_a_source_larger_than_a_chunk_streams_and_splits_the_same_way_each_time(monkeypatch):
    """Chunked sources: every chunk is split stratified and seeded by its index, so two reads agree and
    the split sizes follow the fractions across chunks."""
    import kd.sources as S

    monkeypatch.setattr(S, "CHUNK_ROWS", 700)
    p = DataParams(source="synthetic", synthetic=SyntheticParams(n_samples=3000, n_features=4, n_classes=3))
    src = load_source(p)
    assert [len(c) for c in src.chunks()] == [700, 700, 700, 700, 200]
    a, b = split(src, p, 0), split(load_source(p), p, 0)
    pd.testing.assert_frame_equal(a.test, b.test)
    assert len(a.test) == pytest.approx(0.2 * 3000, abs=10) and len(a.val) == pytest.approx(0.15 * 3000, abs=10)
    per_class = a.test["label"].value_counts(normalize=True)
    overall = src.frame["label"].value_counts(normalize=True)
    assert (per_class - overall).abs().max() < 0.02  # stratified within each chunk
