"""The teacher: one trained model, an ensemble of N, or an imported pre-trained model.

On disk (`models/teacher/`) every member is a format that holds no code: a self-describing checkpoint
(`member-<i>.pt`: spec, input shape, classes, state_dict; loaded with `weights_only=True`) or an ONNX
graph (`member-<i>.onnx`, run by onnxruntime), plus `teacher.json` (mode, combine rule, content hash,
validation accuracy). Loaded, every teacher is a `Teacher` module returning log-probabilities.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd import models
from kd.config import EnsembleMember, Params
from kd.data import Prepared, Preprocessor
from kd.distributed import Runtime, device_of
from kd.export import OnnxModule, to_onnx
from kd.training import accuracy, checkpoint_path, cross_entropy_loss, fit, hard_label_batches


class Teacher(nn.Module):
    """Averages members' logits (or probabilities) and returns log-probabilities."""

    def __init__(self, members: list[nn.Module], combine: str = "logits"):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        if self.combine == "probs":
            return torch.stack([o.softmax(1) for o in outs]).mean(0).clamp_min(1e-12).log()
        return torch.stack(outs).mean(0).log_softmax(1)

    @property
    def feature_model(self) -> nn.Module:
        """Feature losses hook the first member (documented in the configuration reference)."""
        return self.members[0]


class Adapted(nn.Module):
    """A model trained on another preprocessing, fed this run's features: x_theirs = x_ours @ W.T + b.

    Standardisation is affine per column and one-hot blocks are column selections, so the map from this
    run's features to the imported model's is exact (unknown categories map to all-zero blocks)."""

    def __init__(self, model: nn.Module, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(nn.functional.linear(x, self.weight, self.bias))


def feature_map(ours: Preprocessor, theirs: Preprocessor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with theirs.features(df) == ours.features(df) @ W.T + b for any frame both can read."""
    missing = [c for c in theirs.numeric + list(theirs.categories) if c not in ours.numeric + list(ours.categories)]
    if missing:
        raise ValueError(f"the imported teacher reads column(s) {missing[:5]} that this data set does not have")
    ours_idx = {name: i for i, name in enumerate(ours.feature_names)}
    w = np.zeros((len(theirs.feature_names), len(ours.feature_names)), np.float64)
    b = np.zeros(len(theirs.feature_names), np.float64)
    for j, c in enumerate(theirs.numeric):  # (raw - m_t)/s_t with raw = x * s_o + m_o
        i = ours.numeric.index(c)
        w[j, i] = ours.std[i] / theirs.std[j]
        b[j] = (ours.mean[i] - theirs.mean[j]) / theirs.std[j]
    for j, name in enumerate(theirs.feature_names[len(theirs.numeric):], start=len(theirs.numeric)):
        if name in ours_idx:
            w[j, ours_idx[name]] = 1.0
    return torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def member_specs(p: Params) -> list[EnsembleMember]:
    t = p.teacher
    if t.mode == "ensemble":
        return list(t.members)
    return [EnsembleMember(**t.model.model_dump(), seed=p.seed)]


def train_teacher(prep: Prepared, p: Params, out_dir: Path, ckpt_dir: Path | None = None) -> dict:
    """Train the teacher (or every ensemble member) and write it to `out_dir`; return its summary. A member
    that `train_member` already trained for exactly these settings and data (the parallel path of the
    flow) is taken from the member store instead of being trained again."""
    out_dir.mkdir(parents=True, exist_ok=True)
    members, summaries = [], []
    for i in range(len(member_specs(p))):
        stored = _stored_member(prep, p, i, ckpt_dir)
        info = json.loads(stored.with_suffix(".json").read_text()) if stored is not None and stored.with_suffix(".json").exists() else None
        if info is None:
            model, info = _train_member(prep, p, i, ckpt_dir)
            models.save(model, member_specs(p)[i], prep.input_shape, prep.classes, out_dir / f"member-{i}.pt")
        else:
            shutil.copy(stored, out_dir / f"member-{i}.pt")
            model = models.load(out_dir / f"member-{i}.pt")[0]
            info |= {"from_store": True}  # with the process and the times it trained in
            stored.unlink(), stored.with_suffix(".json").unlink()  # used: the store holds only what is pending
        members.append(model)
        summaries.append(info)
    return _write_summary(Teacher(members, p.teacher.combine), prep, p, out_dir, summaries)


def train_member(prep: Prepared, p: Params, i: int, ckpt_dir: Path) -> dict:
    """Train ensemble member `i` alone into the member store (`<checkpoints>/members/`), keyed by what
    determines its weights; `train_teacher` then assembles the stored members. One call per process:
    the flow maps it over the members on a Dask task runner."""
    import os
    import time

    t0 = time.time()
    model, info = _train_member(prep, p, i, ckpt_dir)
    path = _member_key(prep, p, i, ckpt_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    models.save(model, member_specs(p)[i], prep.input_shape, prep.classes, tmp)
    tmp.replace(path)
    info |= {"pid": os.getpid(), "started": t0, "finished": time.time()}
    path.with_suffix(".json").write_text(json.dumps(info))  # written last: the member's commit point
    return info


def _train_member(prep: Prepared, p: Params, i: int, ckpt_dir: Path | None) -> tuple[nn.Module, dict]:
    spec = member_specs(p)[i]
    torch.manual_seed(spec.seed)
    model = models.build(spec, prep.input_shape, prep.n_classes)
    rt = Runtime(device=device_of(p.device), amp=p.amp, checkpoint_every=p.checkpoint_every)
    ckpt = checkpoint_path(ckpt_dir, f"teacher-{i}", spec=spec.model_dump(), train=p.teacher.train.model_dump(),
                           data=prep.meta.get("data_hash", ""), precision=str(rt.amp_dtype))
    res = fit(
        model, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
        (prep.x["val"], prep.y["val"]), p.teacher.train, spec.seed, ckpt, desc=f"teacher[{i}]", rt=rt,
    )
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    return model, {"arch": spec.arch, "seed": spec.seed, "val_accuracy": res.best_val_accuracy, "epochs": res.epochs_run}


def _member_key(prep: Prepared, p: Params, i: int, ckpt_dir: Path) -> Path:
    spec = member_specs(p)[i]
    where = checkpoint_path(Path(ckpt_dir) / "members", f"member-{i}", spec=spec.model_dump(), train=p.teacher.train.model_dump(),
                            data=prep.meta.get("data_hash", ""), device=p.device, amp=p.amp)
    return where


def _stored_member(prep: Prepared, p: Params, i: int, ckpt_dir: Path | None) -> Path | None:
    if ckpt_dir is None:
        return None
    path = _member_key(prep, p, i, ckpt_dir)
    return path if path.exists() else None


def import_teacher(prep: Prepared, p: Params, out_dir: Path, source: Path, bundle: dict | None = None) -> dict:
    """Import a pre-trained teacher from a local file, stored in a format that holds no code.

    - state_dict: a weights file for `teacher.model` (loaded with weights_only=True);
    - onnx: an ONNX graph on this data set's preprocessed features (copied as is);
    - torchscript: converted once to ONNX here (the TorchScript runtime runs only at import);
    - mlflow: a kd predictor bundle (`kd.predictor`, downloaded by the caller): its weights, behind an
      exact map from this run's preprocessing to the bundle's (`bundle` is its predictor.json).
    """
    t = p.teacher
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"teacher.import_uri {source}: file not found")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    n_features = prep.x["val"].shape[1]
    if t.import_format == "state_dict":
        model = models.build(t.model, prep.input_shape, prep.n_classes)
        state = models.safe_load(source)
        try:
            model.load_state_dict(state.get("state_dict", state))
        except RuntimeError as err:
            raise ValueError(f"teacher.import_uri {source}: weights do not fit teacher.model {t.model.arch}: {err}") from None
        models.save(model, t.model, prep.input_shape, prep.classes, out_dir / "member-0.pt")
    elif t.import_format == "mlflow":
        model, saved = models.load(source)
        theirs = Preprocessor(**bundle["preprocessor"])
        if list(saved["classes"]) != list(prep.classes):
            raise ValueError(f"the imported model predicts classes {saved['classes'][:10]}, this data set has {prep.classes[:10]}")
        w, b = feature_map(prep.preprocessor, theirs)
        shutil.copy(source, out_dir / "member-0.pt")
        torch.save({"weight": w, "bias": b}, out_dir / "member-0.adapter.pt")
    elif t.import_format == "torchscript":
        scripted = torch.jit.load(str(source), map_location="cpu").eval()
        to_onnx(scripted, n_features, out_dir / "member-0.onnx")
    else:  # onnx
        shutil.copy(source, out_dir / "member-0.onnx")
    model = load_member(out_dir, 0)
    with torch.no_grad():
        out = model(torch.from_numpy(prep.x["val"][:2]))
    if out.shape[-1] != prep.n_classes:
        raise ValueError(f"imported teacher outputs {out.shape[-1]} classes, the data set has {prep.n_classes}")
    return _write_summary(Teacher([model], t.combine), prep, p, out_dir, [{"imported": t.import_uri, "format": t.import_format}])


def _write_summary(teacher: Teacher, prep: Prepared, p: Params, out_dir: Path, members: list[dict]) -> dict:
    teacher.eval()
    summary = {
        "mode": p.teacher.mode,
        "combine": p.teacher.combine,
        "n_members": len(teacher.members),
        "members": members,
        "teacher_hash": _hash(teacher),
        "data_hash": prep.meta.get("data_hash", ""),
        "val_accuracy": accuracy(teacher, prep.x["val"], prep.y["val"]),
        "params": models.param_count(teacher),
        "size_bytes": sum(m.size_bytes if isinstance(m, OnnxModule) else models.serialized_bytes(m) for m in teacher.members),
    }
    (out_dir / "teacher.json").write_text(json.dumps(summary, indent=2))
    return summary


def _hash(teacher: Teacher) -> str:
    """Content hash of the members' weights and graphs (the teacher part of the soft-target cache key)."""
    import hashlib

    h = hashlib.sha256()
    for m in teacher.members:
        h.update(m.path.read_bytes() if isinstance(m, OnnxModule) else models.state_hash([m.state_dict()]).encode())
    return h.hexdigest()[:16]


def load_member(path: Path, i: int) -> nn.Module:
    if (path / f"member-{i}.onnx").exists():
        return OnnxModule(path / f"member-{i}.onnx")
    model = models.load(path / f"member-{i}.pt")[0]
    if (path / f"member-{i}.adapter.pt").exists():
        a = models.safe_load(path / f"member-{i}.adapter.pt")
        model = Adapted(model, a["weight"], a["bias"]).eval()
    return model


def load_teacher(path: Path) -> tuple[Teacher, dict]:
    """Load `models/teacher/` as a `Teacher` and its summary; nothing loaded can execute code."""
    path = Path(path)
    if not (path / "teacher.json").exists():
        raise FileNotFoundError(f"{path}: no teacher here (teacher.json missing); run 'kd stage train_teacher'")
    summary = json.loads((path / "teacher.json").read_text())
    members = [load_member(path, i) for i in range(summary["n_members"])]
    return Teacher(members, summary["combine"]).eval(), summary


@torch.no_grad()
def predict_logp(model: nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])
