"""Data validation (Great Expectations): a clean data set passes, and each fault fails naming its column."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from kd.config import DataParams, Params
from kd.data import Frames, split
from kd.sources import DataError, load_source
from kd.validate import ValidationFailed, check, validate_frames

TYPE, NULL = "expect_column_values_to_be_in_type_list", "expect_column_values_to_not_be_null"
IN_SET, COUNT, COLUMNS = "expect_column_values_to_be_in_set", "expect_table_row_count_to_be_between", "expect_table_columns_to_match_set"


def _params(**validate) -> Params:
    # Gaussian blobs have unbounded tails: a wide range tolerance keeps the clean baseline clean.
    return Params.model_validate(
        {
            "data": {"source": "synthetic", "synthetic": {"n_features": 4, "n_samples": 400, "n_transfer": 40}},
            "validate": {"range_tolerance": 1.0} | validate,
        }
    )


@pytest.fixture(scope="module")
def clean() -> Frames:
    p = _params()
    return split(load_source(p.data), p.data, p.seed)


def _copy(fr: Frames) -> Frames:
    return replace(fr, train=fr.train.copy(), val=fr.val.copy(), test=fr.test.copy(),
                   transfer=None if fr.transfer is None else fr.transfer.copy())  # fmt: skip


def _failures(fr: Frames, p: Params, out) -> list[dict]:
    """check() raises ValidationFailed carrying the records that validation.json holds; each on its own line."""
    with pytest.raises(ValidationFailed) as exc:
        check(fr, p, out)
    report = json.loads((out / "validation.json").read_text())
    assert report["success"] is False and report["failures"] == exc.value.failures
    lines = str(exc.value).splitlines()
    for f in report["failures"]:
        col = "(table)" if f["column"] is None else repr(f["column"])
        assert any(f["split"] in line and f["expectation"] in line and col in line for line in lines)
    return report["failures"]


def _only(failures: list[dict], **match) -> dict:
    hits = [f for f in failures if all(f[k] == v for k, v in match.items())]
    assert len(hits) == 1, failures
    return hits[0]


def test_clean_digits_passes_and_writes_data_docs(tmp_path):
    p = Params()
    fr = split(load_source(p.data), p.data, p.seed)
    report = check(fr, p, tmp_path)
    assert report["success"] and report["failures"] == [] and report["rows"] == {"train": 1167, "val": 270, "test": 360}
    assert json.loads((tmp_path / "validation.json").read_text()) == json.loads(json.dumps(report, default=str))
    index = tmp_path / report["data_docs"]
    assert report["data_docs"] == "data_docs/index.html" and index.exists()
    html = index.read_text()
    for split_name in ("train", "val", "test"):
        assert f"kd_{split_name}_columns" in html
        assert list((tmp_path / "data_docs" / "validations" / f"kd_{split_name}_columns").rglob("*.html"))
    types = {t for suite in report["suites"].values() for t in suite}
    assert {"expect_column_values_to_be_in_set", "expect_column_values_to_be_between", "expect_column_pair_values_a_to_be_greater_than_b"} <= types
    assert set(report["suites"]) >= {"train_columns", "val_columns", "test_columns", "test_labels", "train_classes", "train_table", "test_leakage"}


def test_clean_synthetic_passes_including_transfer(clean, tmp_path):
    report = validate_frames(clean, _params(), tmp_path)
    assert report["success"], report["failures"]
    assert "transfer_columns" in report["suites"] and report["rows"]["transfer"] == 40


def test_missing_column_is_reported_once(clean, tmp_path):
    fr = _copy(clean)
    fr.val = fr.val.drop(columns="f1")
    failures = _failures(fr, _params(), tmp_path)
    f = _only(failures, split="val", column="f1")  # its other expectations' errors are not repeated
    assert f["expectation"] == COLUMNS and f["observed"] == "missing"
    assert "'f1'" in str(ValidationFailed(failures))


def test_nulls_above_max_null_fraction(clean, tmp_path):
    fr = _copy(clean)
    fr.test.loc[:2, "f2"] = np.nan
    f = _only(_failures(fr, _params(), tmp_path), split="test", column="f2")
    assert f["expectation"] == NULL and f["observed"]["nulls"] == 3
    assert validate_frames(fr, _params(max_null_fraction=0.5), tmp_path)["success"]


def test_string_in_numeric_csv_column_names_column_and_value(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 9, n).astype(str), "label": rng.integers(0, 2, n)})
    df.loc[7, "b"] = "abc"
    df.to_csv(tmp_path / "d.csv", index=False)
    p = Params(data=DataParams(source="csv:d.csv"))
    fr = split(load_source(p.data, tmp_path), p.data, 0)
    assert fr.train["b"].dtype == object  # pandas reads the whole column as strings
    failures = _failures(fr, p, tmp_path / "out")
    assert {f["column"] for f in failures} == {"b"} and {f["expectation"] for f in failures} == {TYPE}
    assert any("abc" in f["observed"]["non_numeric"] for f in failures)
    assert "abc" in str(ValidationFailed(failures))
    # a categorical column is exempt
    p = Params(data=DataParams(source="csv:d.csv", categorical_columns=["b"]))
    assert validate_frames(fr, p, tmp_path / "out")["success"]


def test_value_outside_training_range(clean, tmp_path):
    fr = _copy(clean)
    fr.test.loc[0, "f0"] = 1e6
    fr.transfer.loc[0, "f3"] = -1e6
    fr.val.loc[0, "f3"] = -1e6
    failures = _failures(fr, _params(), tmp_path)
    assert _only(failures, split="test", column="f0")["observed"] == 1e6
    assert _only(failures, split="val", column="f3")["expectation"] == "expect_column_min_to_be_between"
    # the transfer set may drift (production inputs do): its shift is the data-gap drift check's to judge
    assert not [f for f in failures if f["split"] == "transfer"]


def test_label_outside_known_set(clean, tmp_path):
    fr = _copy(clean)
    fr.test.loc[0, "label"] = 99
    f = _only(_failures(fr, _params(), tmp_path), split="test", column="label")
    assert f["expectation"] == IN_SET and f["observed"] == ["99"]
    # with configured classes the training split is checked too (class 3 is unknown)
    p = _params()
    p.data.classes = ["0", "1", "2"]
    failures = _failures(_copy(clean), p, tmp_path)
    assert {(f["split"], f["column"]) for f in failures if f["expectation"] == IN_SET} == {
        ("train", "label"),
        ("val", "label"),
        ("test", "label"),
    }
    assert _only(failures, split="train", expectation=IN_SET)["observed"] == ["3"]


def test_class_below_min_count(clean, tmp_path):
    fr = _copy(clean)
    rare = fr.train.index[fr.train["label"] == 0][3:]
    fr.train = fr.train.drop(index=rare).reset_index(drop=True)
    f = _only(_failures(fr, _params(), tmp_path), split="train", expectation=COUNT)
    assert f["column"] == "label" and f["observed"] == {"value": "0", "rows": 3}


def test_sensitive_group_below_min_size(clean, tmp_path):
    fr = _copy(clean)
    small = fr.train.index[fr.train["group"] == "b"][5:]
    fr.train = fr.train.drop(index=small).reset_index(drop=True)
    f = _only(_failures(fr, _params(), tmp_path), split="train", column="group")
    assert f["expectation"] == COUNT and f["observed"] == {"value": "b", "rows": 5}


def test_a_copied_test_set_is_leakage(clean, tmp_path):
    fr = _copy(clean)
    fr.test = fr.train.sample(len(fr.test), random_state=0).reset_index(drop=True)  # the test split is training rows
    f = _only(_failures(fr, _params(), tmp_path), expectation="no_test_rows_in_train")
    assert f["split"] == "test" and f["column"] is None and f["observed"] == {"share": 1.0, "rows": len(fr.test)}
    assert list((tmp_path / "data_docs" / "validations" / "kd_test_leakage").rglob("*.html"))  # in the Data Docs too
    # a few copied rows are within the tolerance (5% by default) of the data's own (zero) duplicate rate
    fr = _copy(clean)
    fr.test = pd.concat([fr.test, fr.train.iloc[:2]], ignore_index=True)
    report = validate_frames(fr, _params(), tmp_path / "few")
    assert report["success"] and report["leakage"]["exact_records_in_train"] == 2


def test_feature_identical_rows_of_other_records_are_not_leakage(clean, tmp_path):
    fr = _copy(clean)
    dup = fr.train.iloc[: len(fr.test) // 2].copy()
    dup["label"] = (dup["label"] + 1) % 4  # same features, another outcome: a different record
    fr.test = pd.concat([fr.test, dup], ignore_index=True)
    report = validate_frames(fr, _params(), tmp_path)
    assert report["success"], report["failures"]
    assert report["leakage"]["exact_records_in_train"] == 0 and report["leakage"]["feature_identical_in_train"] >= len(dup)


def test_ordinary_repeated_records_pass_at_their_own_rate(tmp_path):
    """Survey-like data: many identical records of different people, split at random. The test split
    repeats training records at about the rate the training split repeats itself: not leakage."""
    rng = np.random.default_rng(0)
    profiles = pd.DataFrame({"a": rng.integers(0, 3, 60), "b": rng.integers(0, 4, 60), "label": rng.integers(0, 2, 60)})
    df = profiles.iloc[rng.integers(0, 60, 1500)].reset_index(drop=True)  # 1500 people, 60 distinct answers
    df.to_csv(tmp_path / "survey.csv", index=False)
    p = Params.model_validate({"data": {"source": "csv:survey.csv"}, "validate": {"min_per_class": 5}})
    fr = split(load_source(p.data, base=tmp_path), p.data, 0)
    report = validate_frames(fr, p, tmp_path / "out")
    leak = report["leakage"]
    assert leak["share"] > 0.9 and leak["expected_share"] > 0.9 and report["success"], report["failures"]


def test_single_class_training_split_fails(clean, tmp_path):
    fr = _copy(clean)
    fr.train["label"] = 0
    f = _only(_failures(fr, _params(), tmp_path), expectation="expect_column_unique_value_count_to_be_between")
    assert f["split"] == "train" and f["column"] == "label" and "at least 2 classes" in f["expected"]


def test_infinite_feature_value_fails_naming_the_column(clean, tmp_path, monkeypatch):
    fr = _copy(clean)
    fr.train.loc[3, "f2"] = np.inf
    f = _only(_failures(fr, _params(), tmp_path / "narrow"), expectation="expect_column_values_to_be_finite")
    assert (f["split"], f["column"], f["observed"]) == ("train", "f2", {"infinite": 1})


def test_streaming_ingest_reports_exactly_what_in_memory_validation_reports(tmp_path, monkeypatch):
    """The pipeline reads a source chunk by chunk; its statistics, hence its failures, are exact: the same
    as validating the whole splits in memory, faults in any chunk included."""
    import kd.sources as S
    from kd.ingest import ingest

    monkeypatch.setattr(S, "CHUNK_ROWS", 150)  # four chunks
    rng = np.random.default_rng(1)
    n = 600
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "label": rng.integers(0, 3, n)})
    df = df.astype({"b": object})
    df.loc[420, "b"] = "oops"  # in the third chunk
    df.loc[590, "a"] = np.nan  # in the last one
    df.to_csv(tmp_path / "d.csv", index=False)
    p = Params.model_validate({"data": {"source": "csv:d.csv"}, "validate": {"min_per_class": 5}})
    src = load_source(p.data, tmp_path)
    with pytest.raises(ValidationFailed) as streamed:
        ingest(src, p, tmp_path / "prepared", tmp_path / "v1")
    in_memory = validate_frames(split(src, p.data, 0), p, tmp_path / "v2")["failures"]

    def key(failures):
        return sorted(json.dumps(f, sort_keys=True, default=str) for f in failures)

    assert key(streamed.value.failures) == key(in_memory) and in_memory
    assert {(f["column"], f["expectation"]) for f in in_memory} >= {("b", TYPE), ("a", NULL)}
    assert not (tmp_path / "prepared" / "x_train.npy").exists()  # nothing written when validation fails


def test_unusable_input_raises_data_error(clean, tmp_path):
    fr = _copy(clean)
    fr.train = fr.train.iloc[:0]
    with pytest.raises(DataError, match="no rows"):
        validate_frames(fr, _params(), tmp_path)
