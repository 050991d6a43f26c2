"""A tiny project for the model tests: the prepared data and a trained teacher, and its soft-target cache."""

from kd import soft_targets, teacher
from kd.config import Params
from kd.data import prepare, split
from kd.sources import load_source


def trained_teacher(root, base: dict):
    """Prepare `base`'s data (data hash "d0") and train its teacher into root/teacher; returns (params, prepared)."""
    p = Params.model_validate(base)
    prep = prepare(split(load_source(p.data), p.data, p.seed), p.data)
    prep.meta["data_hash"] = "d0"
    teacher.train_teacher(prep, p, root / "teacher")
    return p, prep


def cache(root, p, prep, name="cache"):
    """The teacher's soft targets on the distillation inputs, built into root/name; returns (teacher, targets)."""
    model, summary = teacher.load_teacher(root / "teacher")
    key = soft_targets.cache_key(summary["teacher_hash"], "d0", p.soft_targets, p.seed)
    soft_targets.build(root / name, key, prep.distill_inputs(), lambda xb: teacher.predict_logp(model, xb), prep.n_classes, p.soft_targets, p.seed)
    return model, soft_targets.SoftTargets(root / name, expected_key=key)
