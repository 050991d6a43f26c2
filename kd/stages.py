"""The pipeline stages, one function each: project root and typed params in, a small JSON-able result out.

Each matches a `dvc.yaml` stage (`kd stage <name>`), a `params.yaml` section and a Prefect task name.
Paths come from `params.paths`, relative to the root, so nothing depends on the working directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from kd.config import Params, PathsParams


def _path(root: Path, rel: str) -> Path:
    return Path(root) / rel


def validate(root: Path, p: Params) -> dict:
    """Load the source, split it, validate every split (Great Expectations), then write the prepared set."""
    from kd import data, sources
    from kd import validate as gx

    raw = sources.load_source(p.data, base=root)
    frames = data.split(raw, p.data, p.seed)
    report = gx.check(frames, p, _path(root, p.paths.validation))
    prep = data.prepare(frames, p.data)
    digest = data.save(prep, _path(root, p.paths.prepared))
    return {"data_hash": digest, "sizes": {s: len(prep.y[s]) for s in data.SPLITS}, "n_expectations": report["n_expectations"]}


def train_teacher(root: Path, p: Params) -> dict:
    from kd import data, teacher

    prep = data.load(_path(root, p.paths.prepared))
    return teacher.train_teacher(prep, p, _path(root, p.paths.teacher), _path(root, p.paths.checkpoints), root)


def soft_targets(root: Path, p: Params) -> dict:
    """Compute the teacher's outputs on the distillation inputs once, into the content-addressed cache."""
    from kd import data, teacher
    from kd import soft_targets as cache

    prep = data.load(_path(root, p.paths.prepared))
    model, summary = teacher.load_teacher(_path(root, p.paths.teacher))
    key = cache.cache_key(summary["teacher_hash"], prep.meta["data_hash"], p.soft_targets, p.seed)
    result = cache.build(
        _path(root, p.paths.soft_targets), key, prep.distill_inputs(), lambda xb: teacher.predict_logp(model, xb),
        prep.n_classes, p.soft_targets, p.seed,
        meta={"teacher_hash": summary["teacher_hash"], "data_hash": prep.meta["data_hash"], "params": p.soft_targets.model_dump()},
    )
    return result


def distill(root: Path, p: Params) -> dict:
    from kd import data
    from kd import distill as kd_distill

    prep = data.load(_path(root, p.paths.prepared))
    summary = kd_distill.distill(
        prep, _path(root, p.paths.teacher), _path(root, p.paths.soft_targets), p, _path(root, p.paths.models),
        _path(root, p.paths.checkpoints),
    )
    summary["stages"] = [{k: v for k, v in s.items() if k != "history"} for s in summary["stages"]]  # history: distill.json
    return summary


def evaluate(root: Path, p: Params) -> dict:
    from kd import data
    from kd import evaluate as kd_eval

    prep = data.load(_path(root, p.paths.prepared))
    metrics = kd_eval.evaluate(
        prep, _path(root, p.paths.teacher), _path(root, p.paths.models), p, _path(root, p.paths.reports), _path(root, p.paths.export)
    )
    return {k: {m: metrics[k][m] for m in ("accuracy", "ece", "size_bytes", "latency_ms_p50")} for k in ("teacher", "student", "scratch")}


def checks(root: Path, p: Params) -> dict:
    """Drift (data gap), fairness and calibration checks; their gates feed promotion."""
    from kd import data
    from kd.checks import run_checks

    prep = data.load(_path(root, p.paths.prepared))
    with np.load(_path(root, p.paths.reports) / "predictions.npz") as z:
        preds = {k: z[k] for k in z.files}
    result = run_checks(prep, preds, p, _path(root, p.paths.checks))
    return {"gates": [(g["name"], g["passed"], g["action"]) for g in result["gates"]]}


STAGES: dict[str, Callable[[Path, Params], dict]] = {
    "validate": validate,
    "train_teacher": train_teacher,
    "soft_targets": soft_targets,
    "distill": distill,
    "evaluate": evaluate,
    "checks": checks,
}


def out_of_date(root: Path) -> list[str]:
    """The stages DVC would re-run now (changed deps, params or outs), in pipeline order."""
    import contextlib

    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:  # DVC resolves paths from the cwd
        changed = set(repo.status())
    return [name for name in STAGES if name in changed]


def missing_dvc_params(root: Path) -> list[str]:
    """Params that `dvc.yaml` stages depend on but `params.yaml` does not spell out.

    DVC requires every listed key, and every `${...}` value it templates, to be present in the file
    (a default is not enough), so `kd run` checks this first and says which keys to add
    (`section: {}` is enough).
    """
    root = Path(root)
    text = (root / "dvc.yaml").read_text()
    stages = (yaml.safe_load(text) or {}).get("stages", {})
    raw = yaml.safe_load((root / "params.yaml").read_text()) if (root / "params.yaml").exists() else {}
    wanted = set(re.findall(r"\$\{\s*([\w.]+)\s*\}", text))  # templated values, e.g. ${paths.prepared}
    wanted |= {item for stage in stages.values() for item in stage.get("params", []) if isinstance(item, str)}
    missing = []
    for item in wanted:
        node = raw or {}
        for part in item.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                missing.append(item)
                break
    return sorted(missing)


def error_file(root: Path, p: Params | None, stage: str) -> Path:
    """Where a failed `kd stage` leaves its reason for the flow (DVC only reports that the command failed)."""
    path = Path(root) / (p.paths if p is not None else PathsParams()).checkpoints / "errors" / f"{stage}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run(name: str, root: Path, p: Params) -> dict:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}")
    import torch

    torch.set_num_threads(p.threads)  # small models: thread hand-offs cost more than they save
    result = STAGES[name](Path(root), p)
    return json.loads(json.dumps(result, default=str))
