"""The pipeline stages, one function each: project root and typed params in, a small JSON-able result out.

Each matches a `dvc.yaml` stage (`kd stage <name>`), a `params.yaml` section and a Prefect task name.
Paths come from `params.paths`, relative to the root, so nothing depends on the working directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from kd.config import RESOLVED, Params, PathsParams, resolved_yaml
from kd.config.data import FILE_SOURCES


def _path(root: Path, rel: str) -> Path:
    return Path(root) / rel


def config(root: Path, p: Params) -> dict:
    """Resolve params.yaml against kd's defaults into the file every other stage's DVC params come from,
    with the content hash of each input file a setting names (`inputs`), so DVC re-runs the stages that
    read a file when its content changes, not only when its name does. Runs on every repro (it is cheap);
    the file is rewritten only when its content changes."""
    text = resolved_yaml(p) + yaml.safe_dump({"inputs": input_hashes(root, p)}, sort_keys=False)
    path = Path(root) / RESOLVED
    changed = not path.exists() or path.read_text() != text
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return {"params_hash": p.section_hash(), "changed": changed}


def input_hashes(root: Path, p: Params) -> dict[str, str]:
    """md5 of the data source, the transfer set and an imported teacher file ('' when the setting names
    no file, 'missing' when the file is not there: validate then says so)."""
    named = {"source": p.data.source, "transfer": p.data.transfer,
             "teacher": p.teacher.import_uri if p.teacher.mode == "import" and p.teacher.import_format != "mlflow" else ""}
    out = {}
    for key, spec in named.items():
        kind, sep, rel = spec.partition(":")
        rel = rel if sep and kind in FILE_SOURCES else (spec if key == "teacher" else "")
        out[key] = _md5(Path(root) / rel) if rel else ""
    return out


def _md5(path: Path) -> str:
    import hashlib

    if not path.exists():
        return "missing"
    h = hashlib.md5()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
    return h.hexdigest()


def validate(root: Path, p: Params) -> dict:
    """Read the source twice, a chunk at a time: validate every split exactly (Great Expectations over
    exact statistics), then write the prepared set (memory-mappable arrays + raw rows)."""
    from kd import ingest, sources

    src = sources.load_source(p.data, base=root)
    return ingest.ingest(src, p, _path(root, p.paths.prepared), _path(root, p.paths.validation))


def train_teacher(root: Path, p: Params) -> dict:
    """Train the teacher (or ensemble), or import one; the directory becomes a predictor bundle too."""
    from kd import data, teacher
    from kd.card import write_teacher_card

    prep = data.load(_path(root, p.paths.prepared))
    out = _path(root, p.paths.teacher)
    if p.teacher.mode != "import":
        summary = teacher.train_teacher(prep, p, out, _path(root, p.paths.checkpoints))
    elif p.teacher.import_format == "mlflow":
        summary = _import_from_registry(root, p, prep, out)
    else:
        summary = teacher.import_teacher(prep, p, out, _path(root, p.teacher.import_uri))
    write_teacher_card(out, prep)
    return summary


def train_member(root: Path, p: Params, index: int) -> dict:
    """Train one ensemble member into the member store (the flow runs these in parallel before train_teacher)."""
    from kd import data, teacher

    if p.teacher.mode != "ensemble" or not 0 <= index < len(p.teacher.members):
        raise ValueError(f"--member {index}: teacher.mode is {p.teacher.mode} with {len(p.teacher.members)} members")
    return teacher.train_member(data.load(_path(root, p.paths.prepared)), p, index, _path(root, p.paths.checkpoints))


def _import_from_registry(root: Path, p: Params, prep, out: Path) -> dict:
    """A kd predictor from the registry (e.g. models:/kd-student@champion) as this run's teacher."""
    import shutil
    import tempfile

    from kd import teacher
    from kd.card import bundle_dir
    from kd.registry import Registry

    with tempfile.TemporaryDirectory(prefix="kd-import-") as tmp:
        bundle = bundle_dir(Registry(p.registry, root).download_model(p.teacher.import_uri, Path(tmp)))
        meta = json.loads((bundle / "predictor.json").read_text())
        if meta["kind"] != "student":
            raise ValueError(f"teacher.import_uri {p.teacher.import_uri}: a {meta['kind']} bundle; import a student (kd-student) version")
        staged = Path(tmp) / "model.pt"
        shutil.copy(bundle / "model.pt", staged)
        return teacher.import_teacher(prep, p, out, staged, bundle=meta)


def soft_targets(root: Path, p: Params) -> dict:
    """Compute the teacher's outputs on the distillation inputs once, into the content-addressed cache."""
    from kd import data, teacher
    from kd import soft_targets as cache
    from kd.distributed import runtime

    prep = data.load(_path(root, p.paths.prepared))
    model, summary = teacher.load_teacher(_path(root, p.paths.teacher))
    rt = runtime("cpu", p.distributed.backend)  # the teacher's forward passes; rank r takes every world-th shard
    key = cache.cache_key(summary["teacher_hash"], prep.meta["data_hash"], p.soft_targets, p.seed)
    result = cache.build(
        _path(root, p.paths.soft_targets), key, prep.distill_inputs(), lambda xb: teacher.predict_logp(model, xb),
        prep.n_classes, p.soft_targets, p.seed,
        meta={"teacher_hash": summary["teacher_hash"], "data_hash": prep.meta["data_hash"], "params": p.soft_targets.model_dump()},
        rt=rt,
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
    return _without_history(summary)


def soft_targets_summary(root: Path, p: Params) -> dict:
    """What the soft_targets stage reports, read from the committed manifest (after a run in several processes)."""
    from kd.soft_targets import read_manifest

    m = read_manifest(_path(root, p.paths.soft_targets)) or {}
    return {"key": m.get("key"), "n": m.get("n"), "n_shards": m.get("n_shards"), "processes": p.distributed.nproc}


def distill_summary(root: Path, p: Params) -> dict:
    """What the distill stage reports, read from its distill.json (after a run in several processes)."""
    return _without_history(json.loads((_path(root, p.paths.models) / "distill.json").read_text()))


def _without_history(summary: dict) -> dict:
    if not summary:  # a rank other than 0 of a distributed run: rank 0 reports
        return summary
    return summary | {"stages": [{k: v for k, v in s.items() if k != "history"} for s in summary["stages"]]}  # history: distill.json


def evaluate(root: Path, p: Params) -> dict:
    from kd import data
    from kd import evaluate as kd_eval

    prepared = _path(root, p.paths.prepared)
    prep = data.load(prepared)
    metrics = kd_eval.evaluate(
        prep, data.load_raw(prepared, "train"), np.load(prepared / "raw" / "train_index.npy"), lambda: data.raw_batches(prepared, "test"),
        _path(root, p.paths.teacher), _path(root, p.paths.models), p, _path(root, p.paths.reports), _path(root, p.paths.export),
    )
    return {k: {m: metrics[k][m] for m in ("accuracy", "ece", "size_bytes", "latency_ms_p50")} for k in ("teacher", "student", "scratch")}


def checks(root: Path, p: Params) -> dict:
    """Drift (data gap), fairness and calibration checks; their gates feed promotion."""
    from kd import data
    from kd.checks import run_checks
    from kd.config import PREDICTIONS

    prep = data.load(_path(root, p.paths.prepared))
    preds = {f.stem: np.load(f, mmap_mode="r") for f in (_path(root, p.paths.reports) / PREDICTIONS).glob("*.npy")}  # read batch by batch
    result = run_checks(prep, preds, p, _path(root, p.paths.checks))
    return {"gates": [(g["name"], g["passed"], g["action"]) for g in result["gates"]]}


DISTRIBUTED = {"soft_targets": soft_targets_summary, "distill": distill_summary}  # stages that run in distributed.nproc processes, and how their result is read

STAGES: dict[str, Callable[[Path, Params], dict]] = {
    "config": config,
    "validate": validate,
    "train_teacher": train_teacher,
    "soft_targets": soft_targets,
    "distill": distill,
    "evaluate": evaluate,
    "checks": checks,
}


def out_of_date(root: Path, p: Params) -> list[str]:
    """The stages DVC would re-run now (changed deps, params or outs), in pipeline order. The config stage
    runs every time (it re-hashes the input files), so it is resolved first and left out of the answer."""
    import contextlib

    from dvc.repo import Repo

    config(root, p)
    with contextlib.chdir(root), Repo(str(root)) as repo:  # DVC resolves paths from the cwd
        changed = set(repo.status())
    return [name for name in STAGES if name in changed and name != "config"]


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
