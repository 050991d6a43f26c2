"""The one typed configuration: `params.yaml` parsed into `Params`.

Every field has a default, so an empty `params.yaml` is a valid run on the embedded default
(`sklearn:digits`). Sections are named after the pipeline stages that read them, so `dvc.yaml` can
list per stage only the keys it depends on. Unknown keys, wrong types and impossible values are
errors that name the key and the expected form.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key and what was expected."""


class Section(BaseModel):
    # Unknown keys are typos until proven otherwise (nanoGPT's lesson: a silent typo is a wasted run).
    # Each field's docstring is its description in the configuration reference (`kd params --reference`).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- data
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


class DataParams(Section):
    source: str = Field("sklearn:digits", description="sklearn:digits | csv:PATH | parquet:PATH | npz:PATH | synthetic")
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

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        kinds = ("sklearn:digits", "synthetic")
        if v in kinds or v.split(":", 1)[0] in ("csv", "parquet", "npz") and ":" in v and v.split(":", 1)[1]:
            return v
        raise ValueError(f"unknown data source {v!r}; expected one of sklearn:digits, synthetic, csv:PATH, parquet:PATH, npz:PATH")

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
    max_duplicate_test_rows: int = Field(0, ge=0)
    """test rows allowed to repeat a training row (leakage)"""


# --------------------------------------------------------------------------- models & training
class ModelSpec(Section):
    """An architecture by registry name, or a user factory `package.module:factory`."""

    arch: str = "mlp"
    """mlp | cnn1d | cnn2d | resnet | package.module:factory"""
    width: int = Field(64, ge=1)
    """hidden units (mlp) or channels (cnn, resnet)"""
    depth: int = Field(2, ge=1)
    """hidden layers, conv layers or residual blocks"""
    dropout: float = Field(0.0, ge=0, lt=1)
    """dropout before the classifier"""

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        known = ("mlp", "cnn1d", "cnn2d", "resnet")
        if v in known or ":" in v:
            return v
        raise ValueError(f"unknown architecture {v!r}; expected one of {', '.join(known)} or 'package.module:factory'")


class TrainParams(Section):
    epochs: int = Field(30, ge=1)
    """maximum epochs"""
    batch_size: int = Field(64, ge=1)
    """rows per step"""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw | sgd (Nesterov)"""
    lr: float = Field(3e-3, gt=0)
    """peak learning rate"""
    weight_decay: float = Field(1e-4, ge=0)
    """decoupled weight decay (AdamW) or L2 (SGD)"""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum"""
    # Cosine decay to zero over `epochs` (Loshchilov & Hutter 2017); 'none' keeps lr constant.
    schedule: Literal["cosine", "none"] = "cosine"
    """cosine decay to zero over the run (Loshchilov & Hutter 2017), or none"""
    patience: int = Field(0, ge=0, description="early-stopping patience in epochs; 0 disables it")
    progress: bool = False
    """show a progress bar"""


class EnsembleMember(ModelSpec):
    seed: int = 0


class TeacherParams(Section):
    mode: Literal["train", "ensemble", "import"] = "train"
    """train one model, an ensemble of members, or import a pre-trained one"""
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(arch="cnn2d", width=32, depth=2))
    """architecture for mode 'train' (and for 'import' of a state_dict)"""
    members: list[EnsembleMember] = Field(default_factory=list)
    """ensemble members: each a model spec plus its own seed"""
    # Averaging logits keeps a sharper teacher; averaging probabilities is the classical ensemble.
    combine: Literal["logits", "probs"] = "logits"
    """average members' logits (sharper) or probabilities (classical ensemble)"""
    import_format: Literal["state_dict", "torchscript", "mlflow"] = "state_dict"
    """state_dict file, TorchScript file, or an MLflow model URI"""
    import_uri: str = ""
    """path or models:/... URI of the teacher to import"""
    train: TrainParams = Field(default_factory=lambda: TrainParams(epochs=25))
    """training settings of the teacher (each member)"""

    @model_validator(mode="after")
    def _mode_needs(self) -> TeacherParams:
        if self.mode == "ensemble" and len(self.members) < 2:
            raise ValueError("teacher.mode 'ensemble' needs at least 2 entries in teacher.members")
        if self.mode == "import" and not self.import_uri:
            raise ValueError("teacher.mode 'import' needs teacher.import_uri (a file path or an MLflow model URI)")
        return self


class AugmentParams(Section):
    """Per-view input augmentation for function matching (Beyer et al. 2022)."""

    noise_std: float = Field(0.0, ge=0, description="Gaussian noise added to the (scaled) inputs")
    mixup_alpha: float = Field(0.0, ge=0, description="Beta(a, a) mixup between random pairs; 0 disables")


class SoftTargetParams(Section):
    dtype: Literal["float16", "float32"] = "float16"
    """float16 halves the bytes; values are log-probabilities so small ones survive"""
    top_k: int = Field(0, ge=0, description="0 keeps all classes; k keeps the k largest probabilities")
    views: int = Field(1, ge=1, description="augmented views cached per sample")
    augment: AugmentParams = Field(default_factory=AugmentParams)
    """how views are made"""
    shard_size: int = Field(65536, ge=1)
    """rows per shard file"""
    batch_size: int = Field(1024, ge=1)
    """rows per teacher forward pass while building"""


LOSS_NAMES = ("ce", "kd", "dkd", "hint", "at", "rkd", "pkt")


class DistillParams(Section):
    # Weighted sum of named losses. 'kd'/'dkd'/'ce' work from the cached targets; 'hint', 'at',
    # 'rkd', 'pkt' read teacher features and need the teacher online.
    losses: dict[str, float] = Field(default_factory=lambda: {"kd": 1.0})
    """weighted sum of named losses: ce, kd, dkd (from the cache); hint, at, rkd, pkt (teacher online)"""
    temperature: float = Field(4.0, gt=0)
    """softmax temperature T of kd and dkd"""
    # alpha mixes Hinton's soft loss with the hard-label CE: alpha*KD + (1-alpha)*CE.
    alpha: float = Field(0.9, ge=0, le=1)
    """kd = alpha * T^2 * KL + (1 - alpha) * CE"""
    dkd_alpha: float = Field(1.0, ge=0)
    """DKD weight of the target-class term (TCKD)"""
    dkd_beta: float = Field(8.0, ge=0)
    """DKD weight of the non-target term (NCKD)"""
    hint_layer_teacher: str = ""
    """teacher module path hooked for feature losses (default: features)"""
    hint_layer_student: str = ""
    """student module path hooked for feature losses (default: features)"""
    # 'cache' reads soft targets from disk; 'online' runs the teacher every step.
    teacher_source: Literal["cache", "online"] = "cache"
    """cache reads the soft targets from disk; online runs the teacher each step"""
    # Multi-stage (teacher -> assistant -> student, Mirzadeh et al. 2020): each assistant is
    # distilled from the previous model, and the student from the last assistant.
    assistants: list[ModelSpec] = Field(default_factory=list)
    """teacher assistants distilled in turn before the student (Mirzadeh et al. 2020)"""

    @field_validator("losses")
    @classmethod
    def _losses(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in LOSS_NAMES]
        if bad:
            raise ValueError(f"unknown loss {bad[0]!r}; expected some of {', '.join(LOSS_NAMES)}")
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("losses needs at least one positive weight and no negative weights")
        return v


class StudentParams(Section):
    # 'same_as_teacher' turns this into self-distillation (born-again networks, Furlanello et al. 2018).
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(arch="mlp", width=32, depth=1))
    """the student's architecture"""
    same_as_teacher: bool = False
    """self-distillation: the student copies teacher.model (born-again networks)"""
    train: TrainParams = Field(default_factory=lambda: TrainParams(epochs=30))
    """training settings of the student and of the scratch baseline"""


class EvaluateParams(Section):
    ece_bins: int = Field(15, ge=2)
    """equal-width confidence bins of ECE and the reliability diagram"""
    latency_runs: int = Field(200, ge=5)
    """timed batch-1 forward passes (p50, p95)"""
    warmup_runs: int = Field(20, ge=0)
    """untimed passes first"""
    throughput_batch: int = Field(256, ge=1)
    """batch size of the throughput measurement"""
    onnx: bool = True
    """export the student to ONNX and int8 ONNX and measure both"""


# --------------------------------------------------------------------------- checks & gates
class DriftParams(Section):
    enabled: bool = True
    """run the Evidently drift checks"""
    # Share of drifted columns above which the data set is called drifted (Evidently DataDriftPreset).
    drift_share: float = Field(0.5, gt=0, le=1)
    """share of drifted columns at which the data set counts as drifted"""
    data_gap: Literal["fail", "warn", "off"] = "warn"
    """teacher training data vs the transfer set: fail, warn or off"""
    reference: Literal["fail", "warn", "off"] = "warn"
    """the champion's training data vs this run's: fail, warn or off"""


class FairnessParams(Section):
    enabled: bool = True
    """run the per-group fairness checks"""
    # Absolute bound on the student's equalized-odds difference (fairlearn).
    max_disparity: float = Field(0.2, ge=0, le=1)
    """bound on the student's disparity (fairlearn difference)"""
    # Bias amplification: student disparity - teacher disparity <= epsilon (Lukasik et al. 2021).
    max_amplification: float = Field(0.05, ge=0, le=1)
    """student disparity may exceed the teacher's by at most this (Lukasik et al. 2021)"""
    metric: Literal["equalized_odds_difference", "demographic_parity_difference"] = "equalized_odds_difference"
    """disparity metric of both fairness gates"""


class CalibrationParams(Section):
    max_ece: float = Field(0.1, ge=0, le=1)
    """bound on the student's test ECE"""
    temperature_scaling: bool = True
    """also fit a temperature on the validation split and report ECE after it"""


class ChecksParams(Section):
    drift: DriftParams = Field(default_factory=DriftParams)
    fairness: FairnessParams = Field(default_factory=FairnessParams)
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)


class GateParams(Section):
    """Promotion gates, in the manner of TFX's model blessing (Evaluator thresholds)."""

    min_accuracy: float = Field(0.0, ge=0, le=1)
    """student test accuracy at least this"""
    max_latency_ms: float = Field(1e9, gt=0)
    """student p50 latency at batch 1 at most this"""
    max_size_bytes: int = Field(10**12, gt=0)
    """student serialized size at most this"""
    min_retention: float = Field(0.0, ge=0, le=1.5, description="student acc >= r * teacher acc")
    max_champion_drop: float = Field(0.01, ge=0, le=1, description="student acc >= champion acc - delta")


class RegistryParams(Section):
    tracking_uri: str = Field("", description="empty: sqlite:///<project>/mlflow.db")

    def uri(self, root: str | Path) -> str:
        """The tracking and registry URI: the configured one, or the project's SQLite file."""
        return self.tracking_uri or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"
    experiment: str = "kd"
    """MLflow experiment of the pipeline runs"""
    model_name: str = "kd-student"
    """registered model name"""


class PathsParams(Section):
    """Where each stage writes, relative to the project root. dvc.yaml reads these too (templating),
    so a path is written down once."""

    prepared: str = "data/prepared"
    """validated, split, preprocessed data set (DVC output)"""
    validation: str = "reports/validation"
    """validation.json and Great Expectations Data Docs"""
    teacher: str = "models/teacher"
    """teacher checkpoints and teacher.json (DVC output)"""
    soft_targets: str = "cache/soft_targets"
    """the soft-target cache (DVC output)"""
    models: str = "models/distilled"
    """student and scratch-baseline checkpoints (DVC output)"""
    export: str = "models/export"
    """student.onnx and student_int8.onnx (DVC output)"""
    reports: str = "reports/evaluate"
    """metrics.json, reliability.png, confusion.png, predictions.npz"""
    checks: str = "reports/checks"
    """checks.json, drift HTML reports, fairness charts"""
    checkpoints: str = "checkpoints"
    """per-epoch training checkpoints for resume (not versioned)"""
    publish: str = "reports/publish"  # written after the stages (gate table, reference data); not a DVC output
    """gate table, reference data and publish record written after the stages (not a DVC output)"""


class Params(Section):
    seed: int = 0
    """seed for splits, initialisation, batch order and augmentation views"""
    threads: int = Field(1, ge=1)
    """torch/onnxruntime CPU threads per stage: 1 is fastest for small models and immune to a busy machine"""
    paths: PathsParams = Field(default_factory=PathsParams)
    data: DataParams = Field(default_factory=DataParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    teacher: TeacherParams = Field(default_factory=TeacherParams)
    soft_targets: SoftTargetParams = Field(default_factory=SoftTargetParams)
    student: StudentParams = Field(default_factory=StudentParams)
    distill: DistillParams = Field(default_factory=DistillParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    checks: ChecksParams = Field(default_factory=ChecksParams)
    gates: GateParams = Field(default_factory=GateParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True, use_attribute_docstrings=True)

    def student_spec(self) -> ModelSpec:
        return self.teacher.model if self.student.same_as_teacher else self.student.model

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named sections (all when none given): a cache/lineage key."""
        d = self.to_dict()
        picked = {s: d[s] for s in sections} if sections else d
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _format_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {err.error_count()} invalid setting(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (check the spelling; see README 'Configuration reference')")
        else:
            found = e.get("input")
            found_s = "" if isinstance(found, dict) else f" (found {found!r})"
            lines.append(f"  - {key}: {e['msg']}{found_s}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, origin: str = "params") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read `params.yaml` (missing file = all defaults), apply `key.sub=value` overrides, validate."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, found {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. student.train.epochs=5")
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return parse_params(raw, str(path))


def reference_markdown() -> str:
    """The configuration reference (docs/CONFIGURATION.md): every key, its default and its meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(model: BaseModel, prefix: str) -> None:
        for name, f in type(model).model_fields.items():
            value = getattr(model, name)
            path = f"{prefix}{f.alias or name}"
            if isinstance(value, BaseModel):
                walk(value, path + ".")
            else:
                shown = json.dumps(value) if isinstance(value, (list, dict, str)) else repr(value)
                rows.append(f"| `{path}` | `{shown}` | {(f.description or '').replace('|', '/')} |")

    walk(Params(), "")
    return "\n".join(rows) + "\n"
