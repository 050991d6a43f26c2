"""After the DVC stages: track the pipeline run in MLflow, register the student with its lineage, decide
the gates and move `@champion` only if none blocks.

MLflow is reached only through `kd.registry`. A student whose DVC hash is already registered is not
registered again (a no-op rerun changes nothing in the registry).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import yaml

from kd import gates as G
from kd.config import Params


def dvc_hashes(root: Path) -> dict[str, str]:
    """md5 of every stage output recorded in `dvc.lock` (the data versions in the lineage tags)."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return {}
    out: dict[str, str] = {}
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for o in stage.get("outs", []):
            out[o["path"]] = o.get("md5") or o.get("hash", "")
    return out


def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def already_published(root: Path, p: Params, runs: list[dict]) -> dict | None:
    """The last publish's record, if nothing ran since and the student it registered is unchanged."""
    marker = root / p.paths.publish / "published.json"
    if any(r["ran"] for r in runs) or not marker.exists():
        return None
    last = json.loads(marker.read_text())
    same = last.get("dvc.models") == dvc_hashes(root).get(p.paths.models) and last.get("model_name") == p.registry.model_name
    return last if same and last.get("tracking_uri") == (p.registry.tracking_uri or "default") else None


def publish(root: Path, p: Params, runs: list[dict]) -> dict:
    """Log the pipeline run, register the student and apply the gates; a no-op rerun touches nothing."""
    root = Path(root)
    last = already_published(root, p, runs)
    return unchanged_result(root, p, runs, last) if last is not None else _publish(root, p, runs)


def unchanged_result(root: Path, p: Params, runs: list[dict], last: dict) -> dict:
    """The summary of a run that changed nothing: the last publish's decision, restated."""
    note = f"nothing changed since run {last['run_id']}: the student is version {last['version']} (promoted: {last['promoted']})"
    gates_md = root / p.paths.publish / "gates.md"
    table = gates_md.read_text() if gates_md.exists() else ""
    metrics = _load_json(root / p.paths.reports / "metrics.json")
    return last | {"note": note, "stages": runs, "markdown": summary_markdown(runs, metrics, table, p.registry.model_name, note)}


def _publish(root: Path, p: Params, runs: list[dict]) -> dict:
    from kd import data, models
    from kd.registry import Registry

    P = p.paths
    reg = Registry(p.registry, root)
    metrics = _load_json(root / P.reports / "metrics.json")
    checks = _load_json(root / P.checks / "checks.json")
    teacher_info = _load_json(root / P.teacher / "teacher.json")
    hashes = dvc_hashes(root)
    student_hash = hashes.get(P.models, "")
    lineage = {
        "git_commit": git_commit(root),
        "config_hash": p.section_hash(),
        "dvc.data": hashes.get(P.prepared, ""),
        "dvc.teacher": hashes.get(P.teacher, ""),
        "dvc.soft_targets": hashes.get(P.soft_targets, ""),
        "dvc.models": student_hash,
        "teacher_hash": teacher_info.get("teacher_hash", ""),
    }
    champion = reg.champion()
    existing = reg.find_version("dvc.models", student_hash) if student_hash else None
    prep = data.load(root / P.prepared)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")

    with reg.start_run(f"retrain {stamp}", tags=lineage | {"kind": "pipeline"}) as parent:
        pid = parent.info.run_id
        reg.log_dict_flat("", p.to_dict())
        teacher_run = None
        for r in runs:
            with reg.start_run(r["stage"], parent_run_id=pid, tags={"stage": r["stage"], "status": "ran" if r["ran"] else "skipped"}):
                reg.log_metrics({"seconds": r["seconds"], "ran": int(r["ran"])})
                teacher_run = _log_stage(reg, r, root, p, prep, hashes, teacher_info) or teacher_run
        teacher_run = teacher_run or reg.find_run({"stage": "train_teacher", "teacher_hash": lineage["teacher_hash"]}) or "unknown"
        reg.set_tags({"teacher_run_id": teacher_run})
        reg.log_metrics({f"{m}.{k}": v for m, d in metrics.items() for k, v in d.items()})
        ref_gate = _reference_drift(reg, champion, root, p, prep)
        reg.log_artifacts(_reference_file(root, p, prep), "reference")

        gate_list = G.model_gates(metrics, p.gates, _accuracy(champion)) + G.from_dicts(checks.get("gates", [])) + [ref_gate]
        table = G.table(gate_list)
        (root / P.publish).mkdir(parents=True, exist_ok=True)
        (root / P.publish / "gates.md").write_text(table + "\n")
        reg.log_artifacts(root / P.publish / "gates.md")
        blocked = G.blocked(gate_list)
        reg.set_tags({f"gate.{g.name}": g.decision for g in gate_list})

        if existing is not None:
            version, promoted, note = existing, False, f"student unchanged (DVC {student_hash[:8]}): already version {existing}"
        else:
            student, _ = models.load(root / P.models / "student" / "model.pt")
            uri = reg.log_student(student, prep.x["test"][:2], sorted((root / P.export).glob("*.onnx")))
            s = metrics["student"]
            version = reg.register(uri, pid, lineage | {"teacher_run_id": teacher_run, "accuracy": f"{s['accuracy']:.4f}",
                                                        "ece": f"{s['ece']:.4f}", "size_bytes": s["size_bytes"]})
            reg.record_gates(version, gate_list)
            promoted = not blocked
            if promoted:
                reg.promote(version, reason="all gates passed", by="kd run")
                note = f"version {version} is now @champion"
            else:
                note = f"version {version} registered, NOT promoted: failed {', '.join(g.name for g in blocked)}"
        reg.set_tags({"registered_version": version, "promoted": promoted})

    markdown = summary_markdown(runs, metrics, table, p.registry.model_name, note)
    record = {"version": version, "promoted": promoted, "run_id": pid, "dvc.models": student_hash,
              "model_name": p.registry.model_name, "tracking_uri": p.registry.tracking_uri or "default"}
    (root / P.publish / "published.json").write_text(json.dumps(record, indent=2))
    return {"version": version, "promoted": promoted, "blocked": [g.name for g in blocked], "note": note,
            "run_id": pid, "lineage": lineage, "markdown": markdown, "stages": runs}


def _accuracy(version) -> float | None:
    if version is None or "accuracy" not in version.tags:
        return None
    return float(version.tags["accuracy"])


def _log_stage(reg, r: dict, root: Path, p: Params, prep, hashes: dict, teacher_info: dict) -> str | None:
    """Stage-specific params, metrics and artifacts on the stage's child run; returns the teacher run id."""
    P, stage = p.paths, r["stage"]
    if stage == "validate":
        reg.log_input(prep.x["train"], prep.y["train"], "prepared-train", hashes.get(P.prepared, prep.meta["data_hash"]),
                      str(root / P.prepared), "training")
        reg.log_artifacts(root / P.validation, "validation")
    elif stage == "train_teacher":
        reg.log_dict_flat("teacher", p.teacher.model_dump(mode="json"))
        reg.log_metrics({"val_accuracy": teacher_info.get("val_accuracy", 0.0), "params": teacher_info.get("params", 0)})
        reg.set_tags({"teacher_hash": teacher_info.get("teacher_hash", "")} if r["ran"] else {"reused_teacher_hash": teacher_info.get("teacher_hash", "")})
        if r["ran"]:
            return reg.active_run_id()
    elif stage == "soft_targets":
        reg.log_artifacts(root / P.soft_targets / "manifest.json", "soft_targets")
        reg.log_input(prep.distill_inputs(), None, "distill-inputs", hashes.get(P.soft_targets, ""), str(root / P.soft_targets), "distillation")
    elif stage == "distill":
        reg.log_dict_flat("", {"student": p.student.model_dump(mode="json"), "distill": p.distill.model_dump(mode="json")})
        reg.log_artifacts(root / P.models / "distill.json")
    elif stage == "evaluate":
        for f in ("metrics.json", "reliability.png", "confusion.png"):
            reg.log_artifacts(root / P.reports / f)
    elif stage == "checks":
        reg.log_artifacts(root / P.checks, "checks")
    return None


def _reference_file(root: Path, p: Params, prep) -> Path:
    """This run's training features, logged so a later run can test its data against this champion's."""
    import pandas as pd

    path = root / p.paths.publish / "reference" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(prep.x["train"], columns=prep.feature_names).to_parquet(path, index=False)
    return path


def _reference_drift(reg, champion, root: Path, p: Params, prep) -> G.Gate:
    """This run's training data against the data the current champion was trained on (Evidently)."""
    if p.checks.drift.reference == "off":
        return G.skipped("drift_reference", "turned off in checks.drift.reference")
    if champion is None:
        return G.skipped("drift_reference", "no current champion")
    import pandas as pd

    from kd.checks import reference_drift

    tmp = root / p.paths.publish / "champion"
    got = reg.download(champion.run_id, "reference/train.parquet", tmp)
    if got is None:
        return G.skipped("drift_reference", f"champion v{champion.version} has no reference data logged")
    ref = pd.read_parquet(got)
    cur = pd.DataFrame(prep.x["train"], columns=prep.feature_names)
    if list(ref.columns) != list(cur.columns):
        return G.Gate("drift_reference", False, None, None, p.checks.drift.reference, "feature columns differ from the champion's")
    _, gate = reference_drift(ref, cur, p, root / p.paths.publish)
    return gate


def summary_markdown(runs: list[dict], metrics: dict, gate_table: str, model_name: str, note: str) -> str:
    stages = " | ".join(f"{r['stage']}: {'ran' if r['ran'] else 'skipped'} ({r['seconds']:.1f}s)" for r in runs)
    rows = ["| model | accuracy | ECE | params | bytes | p50 ms (batch 1) |", "|---|---|---|---|---|---|"]
    for name in ("teacher", "student", "scratch", "student_onnx_int8"):
        if name in metrics:
            m = metrics[name]
            rows.append(f"| {name} | {m['accuracy']:.4f} | {m['ece']:.4f} | {m['params']:,} | {m['size_bytes']:,} | {m['latency_ms_p50']:.3f} |")
    return "\n".join([
        "## kd retrain", "", f"Stages: {stages}", "", *rows, "", "### Gates", "", gate_table, "",
        f"**Registry ({model_name})**: {note}",
    ])
