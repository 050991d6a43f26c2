"""The teacher: one trained model, an ensemble of N, or an imported pre-trained model.

On disk (`models/teacher/`): one self-describing checkpoint per member (`member-<i>.pt`: spec, input
shape, classes, state_dict) and `teacher.json` (mode, combine rule, content hash, validation accuracy).
Loaded, every teacher is a `Teacher` module returning log-probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd import models
from kd.config import EnsembleMember, Params
from kd.data import Prepared
from kd.training import accuracy, cross_entropy_loss, fit, hard_label_batches


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


class InferenceOnly(nn.Module):
    """An imported model that cannot switch train/eval (a torch.export program, as MLflow's pt2 format
    loads): it is only ever run for inference, so the switch is not passed down to it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> InferenceOnly:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def member_specs(p: Params) -> list[EnsembleMember]:
    t = p.teacher
    if t.mode == "ensemble":
        return list(t.members)
    return [EnsembleMember(**t.model.model_dump(), seed=p.seed)]


def train_teacher(prep: Prepared, p: Params, out_dir: Path, ckpt_dir: Path | None = None, root: Path | None = None) -> dict:
    """Train the teacher (or every ensemble member) and write it to `out_dir`; return its summary.
    `root` locates the project's MLflow store when importing a teacher from it."""
    if p.teacher.mode == "import":
        return import_teacher(prep, p, out_dir, root)
    out_dir.mkdir(parents=True, exist_ok=True)
    members, summaries = [], []
    for i, spec in enumerate(member_specs(p)):
        torch.manual_seed(spec.seed)
        model = models.build(spec, prep.input_shape, prep.n_classes)
        ckpt = None if ckpt_dir is None else ckpt_dir / f"teacher-{i}-{p.section_hash('teacher', 'seed')}-{prep.meta.get('data_hash', '')}.pt"
        res = fit(
            model, len(prep.y["train"]), hard_label_batches(prep.x["train"], prep.y["train"]), cross_entropy_loss,
            (prep.x["val"], prep.y["val"]), p.teacher.train, spec.seed, ckpt, desc=f"teacher[{i}]",
        )
        models.save(model, spec, prep.input_shape, prep.classes, out_dir / f"member-{i}.pt")
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        members.append(model)
        summaries.append({"arch": spec.arch, "seed": spec.seed, "val_accuracy": res.best_val_accuracy, "epochs": res.epochs_run})
    return _write_summary(Teacher(members, p.teacher.combine), prep, p, out_dir, summaries)


def import_teacher(prep: Prepared, p: Params, out_dir: Path, root: Path | None = None) -> dict:
    """Import a pre-trained teacher: a state_dict file (with p.teacher.model), TorchScript, or an MLflow URI."""
    t = p.teacher
    out_dir.mkdir(parents=True, exist_ok=True)
    if t.import_format == "mlflow":
        from kd import registry  # the MLflow adapter; imported only when asked for

        model = InferenceOnly(registry.load_torch_model(t.import_uri, p.registry.uri(root or Path.cwd())))
    else:
        path = Path(t.import_uri)
        if not path.exists():
            raise FileNotFoundError(f"teacher.import_uri {path}: file not found")
        if t.import_format == "torchscript":
            model = torch.jit.load(str(path), map_location="cpu")
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
            state = state.get("state_dict", state)
            model = models.build(t.model, prep.input_shape, prep.n_classes)
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"teacher.import_uri {path}: weights do not fit teacher.model {t.model.arch}: {err}") from None
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(prep.x["val"][:2]))
    if out.shape[-1] != prep.n_classes:
        raise ValueError(f"imported teacher outputs {out.shape[-1]} classes, the data set has {prep.n_classes}")
    if isinstance(model, InferenceOnly):  # a torch.export program: saved as one, batch axis dynamic
        example = torch.from_numpy(prep.x["val"][:4])
        program = torch.export.export(model.model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(out_dir / "member-0.pt2"))
    elif isinstance(model, torch.jit.ScriptModule):
        model.save(str(out_dir / "member-0.torchscript"))
    else:
        torch.save(model, out_dir / "member-0.module.pt")
    return _write_summary(Teacher([model], t.combine), prep, p, out_dir, [{"imported": t.import_uri, "format": t.import_format}])


def _write_summary(teacher: Teacher, prep: Prepared, p: Params, out_dir: Path, members: list[dict]) -> dict:
    teacher.eval()
    summary = {
        "mode": p.teacher.mode,
        "combine": p.teacher.combine,
        "n_members": len(teacher.members),
        "members": members,
        "teacher_hash": models.state_hash([m.state_dict() for m in teacher.members]),
        "data_hash": prep.meta.get("data_hash", ""),
        "val_accuracy": accuracy(teacher, prep.x["val"], prep.y["val"]),
        "params": models.param_count(teacher),
        "size_bytes": models.serialized_bytes(teacher),
    }
    (out_dir / "teacher.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_teacher(path: Path) -> tuple[Teacher, dict]:
    """Load `models/teacher/` as a `Teacher` and its summary."""
    path = Path(path)
    if not (path / "teacher.json").exists():
        raise FileNotFoundError(f"{path}: no teacher here (teacher.json missing); run 'kd stage train_teacher'")
    summary = json.loads((path / "teacher.json").read_text())
    members: list[nn.Module] = []
    for i in range(summary["n_members"]):
        if (path / f"member-{i}.pt").exists():
            members.append(models.load(path / f"member-{i}.pt")[0])
        elif (path / f"member-{i}.pt2").exists():
            members.append(InferenceOnly(torch.export.load(str(path / f"member-{i}.pt2")).module()))
        elif (path / f"member-{i}.torchscript").exists():
            members.append(torch.jit.load(str(path / f"member-{i}.torchscript"), map_location="cpu"))
        else:
            members.append(torch.load(path / f"member-{i}.module.pt", weights_only=False, map_location="cpu"))
    teacher = Teacher(members, summary["combine"]).eval()
    return teacher, summary


@torch.no_grad()
def predict_logp(model: nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])
