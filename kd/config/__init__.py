"""The one typed configuration: `params.yaml` parsed into `Params`.

Every field has a default, so `params.yaml` holds only what the user changes (an empty file is the
embedded default). Sections are named after the pipeline stages that read them; the `config` stage
writes the resolved file (`params.resolved.yaml`, every key with its value) that `dvc.yaml` stages list
their params from, so DVC re-runs exactly the stages whose values changed — whether the change came
from `params.yaml` or from a default here. Unknown keys, wrong types and impossible values are errors
that name the key and the expected form.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kd.config.base import ConfigError, Section
from kd.config.checks import (
    CalibrationParams,
    ChecksParams,
    DriftParams,
    FairnessParams,
    GateParams,
    RegistryParams,
)
from kd.config.data import DataParams, SyntheticParams, ValidateParams
from kd.config.monitor import MonitorParams
from kd.config.runtime import DistributedParams
from kd.config.serve import ServeParams
from kd.config.train import (
    FEATURE_LOSSES,
    LOSS_NAMES,
    OUTPUT_LOSSES,
    QAT_ARCHS,
    TEXT_ARCHS,
    AugmentParams,
    DistillParams,
    EnsembleMember,
    EvaluateParams,
    ModelSpec,
    QatParams,
    SoftTargetParams,
    StudentParams,
    TeacherParams,
    TrainParams,
)

__all__ = [
    "LOSS_NAMES",
    "RESOLVED",
    "AugmentParams",
    "CalibrationParams",
    "ChecksParams",
    "ConfigError",
    "DataParams",
    "DistillParams",
    "DistributedParams",
    "DriftParams",
    "EnsembleMember",
    "EvaluateParams",
    "FairnessParams",
    "GateParams",
    "ModelSpec",
    "Params",
    "PathsParams",
    "QatParams",
    "RegistryParams",
    "Section",
    "ServeParams",
    "SoftTargetParams",
    "StudentParams",
    "SyntheticParams",
    "TeacherParams",
    "TrainParams",
    "ValidateParams",
    "load_params",
    "parse_params",
    "reference_markdown",
]  # fmt: skip

RUNTIME_SECTIONS = ("serve", "monitor", "device", "amp", "checkpoint_every", "distributed")  # where a model is made, served and watched, not what it is
RESOLVED = "params.resolved.yaml"  # written by the `config` stage; the params file of every other dvc.yaml stage
PREDICTIONS = "predictions"  # <paths.reports>/predictions/<name>.npy: the test predictions evaluate writes, memory-mappable


class PathsParams(Section):
    """The project layout: where each stage writes, relative to the project root. Not a setting —
    dvc.yaml declares the same paths (its `vars`), and a test keeps the two equal."""

    prepared: str = "data/prepared"
    """validated, split, preprocessed data set, with the raw splits (DVC output)"""
    validation: str = "reports/validation"
    """validation.json and Great Expectations Data Docs"""
    teacher: str = "models/teacher"
    """teacher checkpoints and teacher.json (DVC output)"""
    soft_targets: str = "cache/soft_targets"
    """the soft-target cache (DVC output, persisted across re-runs)"""
    models: str = "models/distilled"
    """student and scratch-baseline checkpoints (DVC output)"""
    export: str = "models/export"
    """student.onnx, student_int8.onnx and the edge model (DVC output)"""
    reports: str = "reports/evaluate"
    """metrics.json, reliability.png, confusion.png, predictions/ (test probabilities and logits, .npy)"""
    checks: str = "reports/checks"
    """checks.json, drift HTML reports, fairness charts"""
    checkpoints: str = "checkpoints"
    """per-epoch training checkpoints for resume (not versioned)"""
    publish: str = "reports/publish"
    """gate table, predictor bundles and publish record written after the stages (not a DVC output)"""
    logs: str = "logs"
    """full logs of `kd run` (the console shows one line per stage)"""
    monitor: str = "reports/monitor"
    """the last monitoring run's reports (drift HTML, monitor.json); every run's are in MLflow"""


class Params(Section):
    seed: int = 0
    """seed for splits, initialisation, batch order and augmentation views"""
    threads: int = Field(1, ge=1)
    """torch/onnxruntime CPU threads per stage: 1 is fastest for small models and immune to a busy machine"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where teachers, students and the scratch baseline train: auto is cuda when available, else cpu"""
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    """mixed precision (torch.autocast) of that training: auto is bf16 on a CUDA device that supports it, else fp16 (with a GradScaler), and off on the CPU; bf16 also runs on the CPU when asked for; fp16 needs CUDA"""
    checkpoint_every: float = Field(30.0, ge=0)
    """seconds of training between resume checkpoints: one is written at the first epoch end this long after the last, and at the last epoch; 0 writes one every epoch (a kill loses at most this much training, a resume still ends on the same weights)"""
    distributed: DistributedParams = Field(default_factory=DistributedParams)
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
    serve: ServeParams = Field(default_factory=ServeParams)
    monitor: MonitorParams = Field(default_factory=MonitorParams)
    paths: PathsParams = Field(default_factory=PathsParams, exclude=True)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True, use_attribute_docstrings=True)

    @model_validator(mode="after")
    def _qat_fits(self) -> Params:
        """Quantization-aware distillation needs a student whose fake-quantized graph exports (kd.qat) and a
        loss computed from the student's outputs alone (feature losses hook modules that QAT replaces)."""
        if not self.student.qat.enabled:
            return self
        arch = self.student_spec().arch
        if arch not in QAT_ARCHS:
            raise ValueError(f"student.qat.enabled: supported for {', '.join(QAT_ARCHS)} students, not {arch!r} "
                             "(int8 ONNX export of conv students needs BatchNorm folding, not done)")
        features = [n for n in self.distill.losses if n in FEATURE_LOSSES]
        if features:
            raise ValueError(f"student.qat.enabled: works with the output losses ({', '.join(OUTPUT_LOSSES)}), not {features}")
        return self

    @model_validator(mode="after")
    def _text_models(self) -> Params:
        """Text sources give token ids, which only the text architectures read (and they read nothing else)."""
        specs = {"teacher.model": self.teacher.model, "student.model": self.student.model} | {
            f"teacher.members.{i}": m for i, m in enumerate(self.teacher.members)} | {
            f"distill.assistants.{i}": m for i, m in enumerate(self.distill.assistants)}
        for where, spec in specs.items():
            if where == "teacher.model" and self.teacher.mode == "ensemble" or ":" in spec.arch:
                continue
            if self.data.is_text != (spec.arch in TEXT_ARCHS):
                need = f"one of {', '.join(TEXT_ARCHS)}" if self.data.is_text else "a tabular/image architecture (mlp, cnn1d, cnn2d, resnet)"
                raise ValueError(f"{where}.arch {spec.arch!r} does not fit data.source {self.data.source!r}: it needs {need}")
        student = self.student_spec()
        if student.arch == "minilm_layers" and not self.distill.assistants and self.teacher.mode == "train" and (
                self.teacher.model.arch != "minilm" or self.teacher.model.layers != student.layers):
            raise ValueError("student.model.arch 'minilm_layers' copies every other layer of its teacher: teacher.model needs "
                             f"arch 'minilm' with the same layers ({student.layers}), not {self.teacher.model.arch!r} with {self.teacher.model.layers}")
        return self

    @model_validator(mode="after")
    def _amp_on_the_device(self) -> Params:
        if self.amp == "fp16" and self.device == "cpu":
            raise ValueError("amp: fp16 needs a CUDA device, and device is cpu; use amp: bf16 (CPU autocast) or off")
        return self

    def student_spec(self) -> ModelSpec:
        return self.teacher.model if self.student.same_as_teacher else self.student.model

    def to_dict(self) -> dict[str, Any]:
        """Every setting with its value (the layout `paths` is not a setting)."""
        return self.model_dump(mode="json", by_alias=True)

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named sections (when none given: all but the runtime ones, which do not shape a
        model): a cache/lineage key."""
        d = self.to_dict()
        picked = {s: d[s] for s in sections} if sections else {k: v for k, v in d.items() if k not in RUNTIME_SECTIONS}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _format_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {err.error_count()} invalid setting(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (check the spelling; see docs/CONFIGURATION.md)")
        else:
            found = e.get("input")
            found_s = "" if isinstance(found, dict) else f" (found {found!r})"
            lines.append(f"  - {key}: {e['msg']}{found_s}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, origin: str = "params") -> Params:
    raw = dict(raw or {})
    if "paths" in raw:
        raise ConfigError(f"{origin}: paths: not a setting; the project layout is declared once in dvc.yaml (vars: paths)")
    try:
        return Params.model_validate(raw)
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
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (cannot be decoded as UTF-8)") from None
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


def resolved_yaml(p: Params) -> str:
    """The resolved params file: every setting, defaults filled in (what DVC's params deps read)."""
    head = "# Written by `kd stage config` from params.yaml and kd's defaults; do not edit (edit params.yaml).\n"
    return head + yaml.safe_dump(p.to_dict(), sort_keys=False)


def reference_markdown() -> str:
    """The configuration reference (docs/CONFIGURATION.md): every key, its default and its meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(model: BaseModel, prefix: str) -> None:
        for name, f in type(model).model_fields.items():
            if f.exclude:
                continue
            value = getattr(model, name)
            path = f"{prefix}{f.alias or name}"
            if isinstance(value, BaseModel):
                walk(value, path + ".")
            else:
                shown = json.dumps(value) if isinstance(value, (list, dict, str)) else repr(value)
                rows.append(f"| `{path}` | `{shown}` | {(f.description or '').replace('|', '/')} |")

    walk(Params(), "")
    return "\n".join(rows) + "\n"
