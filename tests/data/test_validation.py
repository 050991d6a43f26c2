"""Data validation (Great Expectations): a clean data set passes, and each fault fails naming its column."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import kd.validate as V
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
    assert report["success"] and report["failures"] == [] and report["mode"] == "per_column"
    assert report["n_expectations"] > 3 * 64  # per-column expectations on every split
    assert json.loads((tmp_path / "validation.json").read_text()) == json.loads(json.dumps(report, default=str))
    index = tmp_path / report["data_docs"]
    assert report["data_docs"] == "data_docs/index.html" and index.exists()
    html = index.read_text()
    for split_name in ("train", "val", "test"):
        assert f"kd_{split_name}" in html
        pages = list((tmp_path / "data_docs" / "validations" / f"kd_{split_name}").rglob("*.html"))
        assert pages and "px10" in pages[0].read_text()
    types = {s["type"] for s in report["suite"]}
    assert {NULL, TYPE, COLUMNS, IN_SET, COUNT, "expect_column_min_to_be_between", "expect_column_max_to_be_between"} <= types
    assert report["seconds"] < 60


def test_clean_synthetic_passes_including_transfer(clean, tmp_path):
    report = validate_frames(clean, _params(), tmp_path)
    assert report["success"], report["failures"]
    assert any("transfer" in s["batches"] for s in report["suite"])


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
    failures = _failures(fr, _params(), tmp_path)
    assert _only(failures, split="test", column="f0")["observed"] == 1e6
    assert _only(failures, split="transfer", column="f3")["expectation"] == "expect_column_min_to_be_between"


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


def test_test_rows_duplicated_in_train(clean, tmp_path):
    fr = _copy(clean)
    dup = fr.train.iloc[:3].copy()
    dup["label"] = (dup["label"] + 1) % 4  # feature-only equality: the label does not matter
    fr.test = pd.concat([fr.test, dup], ignore_index=True)
    f = _only(_failures(fr, _params(), tmp_path), expectation="no_test_rows_in_train")
    assert f["split"] == "test" and f["column"] is None and f["observed"] == 3
    assert validate_frames(fr, _params(max_duplicate_test_rows=3), tmp_path)["success"]
    assert "_kd_test_row_in_train" in next((tmp_path / "data_docs" / "validations" / "kd_test").rglob("*.html")).read_text()


def test_wide_column_profile_reports_the_same_failures(clean, tmp_path, monkeypatch):
    fr = _copy(clean)
    fr.val = fr.val.drop(columns="f1")
    fr.test.loc[:2, "f2"] = np.nan
    fr.test["f3"] = fr.test["f3"].astype(object)
    fr.test.loc[5, "f3"] = "oops"
    fr.test.loc[0, "f0"] = 1e6
    fr.transfer.loc[0, "f0"] = -1e6
    narrow = validate_frames(fr, _params(), tmp_path / "narrow")
    monkeypatch.setattr(V, "WIDE_FEATURES", 2)
    wide = validate_frames(fr, _params(), tmp_path / "wide")
    assert (narrow["mode"], wide["mode"]) == ("per_column", "column_profile")
    assert wide["n_expectations"] < narrow["n_expectations"]

    def key(report: dict) -> list[str]:
        return sorted(json.dumps(f, sort_keys=True, default=str) for f in report["failures"])

    assert key(wide) == key(narrow)
    assert {(f["split"], f["column"], f["expectation"]) for f in wide["failures"]} == {
        ("val", "f1", COLUMNS), ("test", "f2", NULL), ("test", "f3", TYPE),
        ("test", "f0", "expect_column_max_to_be_between"), ("transfer", "f0", "expect_column_min_to_be_between"),
    }  # fmt: skip


def test_unusable_input_raises_data_error(clean, tmp_path):
    fr = _copy(clean)
    fr.train = fr.train.iloc[:0]
    with pytest.raises(DataError, match="no rows"):
        validate_frames(fr, _params(), tmp_path)
