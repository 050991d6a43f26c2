"""Params of the model stages: architectures, training, teacher, soft-target cache, student, distillation
and evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kd.config.base import Section

TEXT_ARCHS = ("minilm", "minilm_layers", "embbag", "textcnn")  # read token ids (kd.transformer)


class ModelSpec(Section):
    """An architecture by registry name, or a user factory `package.module:factory`."""

    arch: str = "mlp"
    """mlp | cnn1d | cnn2d | resnet | minilm | minilm_layers | embbag | textcnn (text) | package.module:factory"""
    width: int = Field(64, ge=1)
    """hidden units (mlp) or channels (cnn, resnet)"""
    depth: int = Field(2, ge=1)
    """hidden layers, conv layers or residual blocks"""
    dropout: float = Field(0.0, ge=0, lt=1)
    """dropout before the classifier"""
    layers: int = Field(0, ge=0)
    """text transformers (minilm, minilm_layers): the pretrained encoder's bottom layers kept (0: all 6); minilm_layers takes every other one of them"""
    tune_layers: int = Field(-1, ge=-1)
    """text transformers: only the top k encoder layers (and the head) train; 0 freezes the encoder, -1 trains everything"""

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        known = ("mlp", "cnn1d", "cnn2d", "resnet", *TEXT_ARCHS)
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
    import_format: Literal["state_dict", "onnx", "torchscript", "mlflow"] = "state_dict"
    """state_dict file, ONNX file, TorchScript file (converted to ONNX once), or a kd model in the MLflow registry"""
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


OUTPUT_LOSSES = ("ce", "kd", "dkd", "dist")  # computed from the student's outputs alone
FEATURE_LOSSES = ("hint", "at", "rkd", "pkt", "crd", "cos")  # read teacher and student features (kd/hooks.py)
LOSS_NAMES = OUTPUT_LOSSES + FEATURE_LOSSES


class DistillParams(Section):
    # Weighted sum of named losses. 'kd'/'dkd'/'dist'/'ce' work from the cached targets; 'hint', 'at',
    # 'rkd', 'pkt', 'crd' read teacher features and need the teacher online.
    losses: dict[str, float] = Field(default_factory=lambda: {"kd": 1.0})
    """weighted sum of named losses: ce, kd, dkd, dist (from the cache); hint, at, rkd, pkt, crd, cos (teacher online)"""
    temperature: float = Field(4.0, gt=0)
    """softmax temperature T of kd and dkd (dist has its own: dist_temperature)"""
    # alpha mixes Hinton's soft loss with the hard-label CE: alpha*KD + (1-alpha)*CE.
    alpha: float = Field(0.9, ge=0, le=1)
    """kd = alpha * T^2 * KL + (1 - alpha) * CE"""
    dkd_alpha: float = Field(1.0, ge=0)
    """DKD weight of the target-class term (TCKD)"""
    dkd_beta: float = Field(8.0, ge=0)
    """DKD weight of the non-target term (NCKD)"""
    # DIST keeps its own temperature: the paper's tau = 1 next to kd's usual T = 4 in one run.
    dist_temperature: float = Field(1.0, gt=0)
    """DIST softmax temperature tau (Huang et al. 2022 use 1); both terms are scaled by tau^2"""
    dist_beta: float = Field(1.0, ge=0)
    """DIST weight of the inter-class relation (per sample, over classes)"""
    dist_gamma: float = Field(1.0, ge=0)
    """DIST weight of the intra-class relation (per class, over the batch)"""
    crd_feat_dim: int = Field(128, ge=1)
    """CRD embedding size of the student and teacher heads"""
    crd_nce_k: int = Field(16384, ge=1)
    """CRD negatives per anchor, drawn uniformly from the memory bank; clipped to N - 1 distillation rows"""
    crd_temperature: float = Field(0.07, gt=0)
    """CRD temperature of the NCE scores exp(v . m / tau)"""
    crd_momentum: float = Field(0.5, ge=0, lt=1)
    """CRD memory-bank momentum: a row becomes norm(mu * row + (1 - mu) * new embedding)"""
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


class QatParams(Section):
    """Quantization-aware distillation (`kd.qat`): after distillation, the student is fine-tuned with fake
    quantization (torch.ao.quantization QAT, Jacob et al. 2018) under the same distillation loss and
    exported as int8 ONNX with QuantizeLinear/DequantizeLinear nodes carrying the learned scales."""

    enabled: bool = False
    """fine-tune the distilled student with fake int8 quantization; its int8 ONNX becomes the served int8 model"""
    epochs: int = Field(20, ge=1)
    """epochs of the quantization-aware fine-tune that follows distillation (same loss, same cached targets)"""
    lr: float = Field(3e-4, gt=0)
    """peak learning rate of the fine-tune (cosine decay to zero; optimizer and batch size from student.train)"""
    freeze_observers_after: int = Field(10, ge=0)
    """fine-tune epoch after which the quantization ranges stop moving (the scales freeze); 0 never freezes"""

    @model_validator(mode="after")
    def _freeze_within(self) -> QatParams:
        if self.freeze_observers_after > self.epochs:
            raise ValueError(f"freeze_observers_after ({self.freeze_observers_after}) must be at most epochs ({self.epochs}); "
                             "0 never freezes the observers")
        return self


QAT_ARCHS = ("mlp",)  # students whose fake-quantized graph exports to int8 ONNX (kd.qat); conv students: BatchNorm folding not done


class StudentParams(Section):
    # 'same_as_teacher' turns this into self-distillation (born-again networks, Furlanello et al. 2018).
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(arch="mlp", width=32, depth=1))
    """the student's architecture"""
    same_as_teacher: bool = False
    """self-distillation: the student copies teacher.model (born-again networks)"""
    train: TrainParams = Field(default_factory=lambda: TrainParams(epochs=30))
    """training settings of the student and of the scratch baseline"""
    qat: QatParams = Field(default_factory=QatParams)
    """quantization-aware distillation of the student (off by default: int8 by post-training quantization)"""


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


