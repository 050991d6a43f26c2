"""After the DVC stages: publish the student — track the run in MLflow, register the student (and its
teacher) as complete predictors, decide the gates and move `@champion` only if none blocks.

Publication is a small state machine keyed by the candidate (the DVC hashes of the student's weights and of the
prepared data that holds its preprocessing),
recorded in the registry itself, so it can be re-entered after a crash at any point and ends where an
uninterrupted run would:

    logged      a finished pipeline run tagged kd.candidate + kd.logged (models, gates.json, artifacts);
                an interrupted attempt (no kd.logged) is deleted and logged again
    registered  the version exists, tagged kd.candidate and kd.publish=registered (one request)
    gated       every gate decision is a version tag (kd.publish=gated)
    done        @champion moved if no gate blocks (kd.aliases, written ahead), kd.publish=done

Gate decisions are made once, when the run is logged (against the champion of that moment), and read
back from its gates.json on re-entry. A student whose hash is already published is not registered
again; a no-op rerun touches nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np

from kd import aliases
from kd import gates as G
from kd.config import Params
from kd.failpoints import crash_point
from kd.lineage import candidate_id, dvc_hashes, lineage
from kd.report import summary_markdown


class PublishError(RuntimeError):
    """Publication cannot start (e.g. the stages' outputs are not in dvc.lock)."""


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def already_published(root: Path, p: Params, runs: list[dict]) -> dict | None:
    """The last publish's record, if nothing ran since and the student it registered is unchanged."""
    marker = root / p.paths.publish / "published.json"
    if any(r["ran"] for r in runs) or not marker.exists():
        return None
    last = json.loads(marker.read_text())
    same = last.get("candidate") == candidate_id(root, p) and last.get("model_name") == p.registry.model_name
    return last if same and last.get("tracking_uri") == p.registry.uri(root) else None


def unchanged_result(root: Path, p: Params, runs: list[dict], last: dict) -> dict:
    """The summary of a run that changed nothing: the last publish's decision, restated."""
    note = f"nothing changed since run {last['run_id']}: the student is version {last['version']} (promoted: {last['promoted']})"
    gates_md = root / p.paths.publish / "gates.md"
    table = gates_md.read_text() if gates_md.exists() else ""
    metrics = _load_json(root / p.paths.reports / "metrics.json")
    return last | {"note": note, "stages": runs, "markdown": summary_markdown(runs, metrics, table, p.registry.model_name, note)}


def publish(root: Path, p: Params, runs: list[dict], reason: str = "") -> dict:
    """Log, register, gate and promote the student, resuming a publication a crash interrupted."""
    from kd.registry import Registry

    root = Path(root)
    last = already_published(root, p, runs)
    if last is not None:
        return unchanged_result(root, p, runs, last)
    reg = Registry(p.registry, root)
    aliases.recover(reg)  # finish an alias move a crash cut off
    teacher_info = _load_json(root / p.paths.teacher / "teacher.json")
    lin = lineage(root, p, teacher_info.get("teacher_hash", ""))
    candidate = lin["kd.candidate"]
    if not candidate:
        raise PublishError(f"dvc.lock records no hash for {p.paths.models} or {p.paths.prepared}: publish runs after the DVC stages (kd run)")
    version = reg.find_version("kd.candidate", candidate)
    existed = version is not None
    if version is None:
        run = _logged_run(reg, candidate) or _log_run(reg, root, p, runs, lin, reason)
        crash_point("publish:logged")
        teacher_version = _register_teacher(reg, run, lin)
        metrics = _load_json(root / p.paths.reports / "metrics.json")["student"]
        version = reg.register(run.data.tags["kd.student_uri"], lin | {
            "kd.candidate": candidate, "kd.publish": "registered", "pipeline_run_id": run.info.run_id,
            "teacher_run_id": run.data.tags.get("teacher_run_id", ""), "teacher_version": teacher_version,
            "accuracy": f"{metrics['accuracy']:.4f}", "ece": f"{metrics['ece']:.4f}", "size_bytes": metrics["size_bytes"],
        }, description="Students distilled by kd; @champion serves.")
        crash_point("publish:registered")
    mv = reg.version(version)
    run_id, state = mv.tags["pipeline_run_id"], mv.tags.get("kd.publish", "done")
    gate_list = _gates_of(reg, run_id, root, p, candidate)
    blocked = G.blocked(gate_list)
    if state == "registered":
        _record_gates(reg, version, gate_list)
        reg.set_version_tags(version, {"kd.publish": "gated"})
        crash_point("publish:gated")
        state = "gated"
    if state == "gated":
        promoted = not blocked and aliases.ensure_champion(reg, version, "all gates passed", "kd run") or (
            not blocked and aliases.stack(reg)[-1:] == [version])
        crash_point("publish:promoted")
        reg.set_version_tags(version, {"kd.publish": "done", "kd.promoted": str(bool(promoted)).lower()})
        note = (f"version {version} is now @champion" if promoted
                else f"version {version} registered, NOT promoted: failed {', '.join(g.name for g in blocked)}")
        if existed:
            note += " (publication resumed after an interruption)"
    else:  # published before (a crash after the last step, or this very student registered by an earlier run)
        promoted = mv.tags.get("kd.promoted") == "true"
        note = (f"version {version} is now @champion" if promoted and aliases.stack(reg)[-1:] == [version]
                else f"student unchanged (DVC {candidate[:8]}): already version {version} (promoted when published: {promoted})")
    table = G.table(gate_list)
    markdown = summary_markdown(runs, _load_json(root / p.paths.reports / "metrics.json"), table, p.registry.model_name, note)
    record = {"version": version, "promoted": bool(promoted), "run_id": run_id, "candidate": candidate,
              "model_name": p.registry.model_name, "tracking_uri": reg.uri}
    crash_point("publish:done")
    out = root / p.paths.publish
    out.mkdir(parents=True, exist_ok=True)
    (out / "gates.md").write_text(table + "\n")
    (out / "published.json").write_text(json.dumps(record, indent=2))
    return record | {"blocked": [g.name for g in blocked], "note": note, "lineage": lin, "markdown": markdown, "stages": runs}


def _logged_run(reg, candidate: str):
    """The finished, completely logged run of this candidate; interrupted attempts are deleted."""
    runs = reg.find_runs({"kd.candidate": candidate, "kind": "pipeline"})
    done = [r for r in runs if r.data.tags.get("kd.logged") == "true" and r.info.status == "FINISHED"]
    for r in runs:
        if r not in done:
            reg.delete_run(r.info.run_id)
    return done[0] if done else None


def _log_run(reg, root: Path, p: Params, runs: list[dict], lin: dict, reason: str = ""):
    """The pipeline run: params, a child run per stage, metrics, gate decisions, the predictor bundles."""
    from kd import data

    P = p.paths
    metrics = _load_json(root / P.reports / "metrics.json")
    checks = _load_json(root / P.checks / "checks.json")
    teacher_info = _load_json(root / P.teacher / "teacher.json")
    hashes = dvc_hashes(root)
    prep = data.load(root / P.prepared)
    champion = aliases_champion(reg)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    tags = lin | {"kind": "pipeline"} | ({"kd.reason": reason[:5000]} if reason else {})
    with reg.start_run(f"retrain {stamp}", tags=tags) as parent:
        pid = parent.info.run_id
        reg.log_dict_flat("", p.to_dict())
        teacher_run = None
        for r in runs:
            with reg.start_run(r["stage"], parent_run_id=pid, tags={"stage": r["stage"], "status": "ran" if r["ran"] else "skipped"}):
                reg.log_metrics({"seconds": r["seconds"], "ran": int(r["ran"])})
                teacher_run = _log_stage(reg, r, root, p, prep, hashes, teacher_info) or teacher_run
        runs_of_teacher = reg.find_runs({"stage": "train_teacher", "teacher_hash": lin["teacher_hash"]})
        teacher_run = teacher_run or (runs_of_teacher[0].info.run_id if runs_of_teacher else "unknown")
        reg.set_tags({"teacher_run_id": teacher_run})
        reg.log_metrics({f"{m}.{k}": v for m, d in metrics.items() for k, v in d.items()})
        crash_point("publish:logging")

        work = root / P.publish / "champion"
        shutil.rmtree(work, ignore_errors=True)
        bundle = None if champion is None else _champion_bundle(reg, champion, work)
        gate_list = (G.model_gates(metrics, p.gates, _champion_on_this_split(bundle, champion, root, p))
                     + G.from_dicts(checks.get("gates", [])) + [_reference_drift(bundle, champion, root, p)])
        out = root / P.publish
        out.mkdir(parents=True, exist_ok=True)
        (out / "gates.json").write_text(json.dumps({"candidate": lin["kd.candidate"], "gates": [g.to_dict() for g in gate_list]}, indent=2))
        (out / "gates.md").write_text(G.table(gate_list) + "\n")
        reg.log_artifacts(out / "gates.json")
        reg.log_artifacts(out / "gates.md")
        if (out / "drift_reference.html").exists():
            reg.log_artifacts(out / "drift_reference.html")
        reg.set_tags({f"gate.{g.name}": g.decision for g in gate_list})

        example = next(data.raw_batches(root / P.prepared, "test", rows=2))[[f["name"] for f in _features(root / P.export)]]
        tags = {"kd.student_uri": reg.log_predictor(root / P.export, "student", example)}
        if reg.find_version("teacher_hash", lin["teacher_hash"], name=reg.teacher_name) is None:
            tags["kd.teacher_uri"] = reg.log_predictor(root / P.teacher, "teacher", example)
        reg.set_tags(tags | {"kd.logged": "true"})  # the commit point of this step
        crash_point("publish:logged-running")
    return reg.find_runs({"kd.candidate": lin["kd.candidate"], "kd.logged": "true"}, include_unfinished=False)[0]


def aliases_champion(reg):
    champion = aliases.stack(reg)
    return None if not champion else reg.version(champion[-1])


def _features(bundle: Path) -> list[dict]:
    return json.loads((bundle / "predictor.json").read_text())["features"]


def _register_teacher(reg, run, lin: dict) -> str:
    """The teacher's registered version (its own model name), registered once per teacher hash."""
    found = reg.find_version("teacher_hash", lin["teacher_hash"], name=reg.teacher_name)
    if found is not None:
        return found
    uri = run.data.tags.get("kd.teacher_uri")
    if uri is None:
        raise PublishError(f"run {run.info.run_id} logged no teacher model and none with hash {lin['teacher_hash']} is registered")
    return reg.register(uri, {"teacher_hash": lin["teacher_hash"], "dvc.teacher": lin["dvc.teacher"], "pipeline_run_id": run.info.run_id},
                        name=reg.teacher_name, description="Teachers of the kd students (see each student's teacher_version tag).")


def _gates_of(reg, run_id: str, root: Path, p: Params, candidate: str) -> list[G.Gate]:
    """The gate decisions made when the run was logged (local copy, or the run's gates.json)."""
    saved = _load_json(root / p.paths.publish / "gates.json")
    if saved.get("candidate") != candidate:
        saved = json.loads(reg.download_run_file(run_id, "gates.json", root / p.paths.publish / "downloaded").read_text())
    return G.from_dicts(saved["gates"])


def _record_gates(reg, version: str, gate_list: list[G.Gate]) -> None:
    tags = {}
    for g in gate_list:
        value = "" if g.value is None else f" value={g.value:.6g}"
        threshold = "" if g.threshold is None else f" threshold={g.threshold:.6g}"
        tags[f"gate.{g.name}"] = f"{g.decision}{value}{threshold}"
    failed = [g.name for g in gate_list if g.blocks]
    reg.set_version_tags(version, tags | {"gates.passed": str(not failed).lower(), "gates.failed": ",".join(failed) or "none"})


def _champion_bundle(reg, champion, work: Path) -> Path:
    from kd.card import bundle_dir

    return bundle_dir(reg.download_model(f"models:/{reg.name}/{champion.version}", work))


def _champion_on_this_split(bundle: Path | None, champion, root: Path, p: Params) -> dict | None:
    """The champion's accuracy on *this* run's test split (raw rows through its own preprocessing)."""
    if champion is None:
        return None
    from kd import data
    from kd.predictor import InputError, Predictor

    label = json.loads((root / p.paths.prepared / "meta.json").read_text())["label_column"]
    right = total = 0
    try:
        predictor = Predictor(bundle, backend="torch")
        for test in data.raw_batches(root / p.paths.prepared, "test"):  # batch by batch: any test split fits
            predicted, _ = predictor.predict(test)
            right += int(np.sum(np.asarray(predicted) == test[label].astype(str).to_numpy()))
            total += len(test)
    except (InputError, ValueError, FileNotFoundError) as err:
        return {"version": str(champion.version), "accuracy": None, "error": f"champion v{champion.version} cannot predict this test split: {err}"}
    return {"version": str(champion.version), "accuracy": right / max(total, 1), "error": ""}


def _reference_drift(bundle: Path | None, champion, root: Path, p: Params) -> G.Gate:
    """This run's training rows against the champion's training reference, on raw columns (Evidently)."""
    d = p.checks.drift
    if not d.enabled or d.reference == "off":
        return G.skipped("drift_reference", "turned off in checks.drift")
    if champion is None:
        return G.skipped("drift_reference", "no current champion")
    from kd import data
    from kd.checks import reference_drift
    from kd.predictor import Predictor

    ref = Predictor(bundle, backend="torch").reference()
    if ref is None:
        return G.Gate("drift_reference", False, None, None, d.reference, f"champion v{champion.version} holds no training reference")
    features = _features(bundle)
    columns = [f["name"] for f in features]
    current = data.load_raw(root / p.paths.prepared, "train")
    missing = [c for c in columns if c not in current.columns]
    if missing:
        return G.Gate("drift_reference", False, None, None, d.reference, f"this data lacks the champion's column(s) {missing[:5]}")
    text = [f["name"] for f in features if f["kind"] == "text"]
    _, gate = reference_drift(ref[columns], current[columns], p, root / p.paths.publish, text)
    return gate


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
        th = teacher_info.get("teacher_hash", "")
        # the run that trained it — or, if that run never got published (it failed later), this one
        if r["ran"] or not reg.find_runs({"stage": "train_teacher", "teacher_hash": th}):
            reg.set_tags({"teacher_hash": th})
            return reg.active_run_id()
        reg.set_tags({"reused_teacher_hash": th})
    elif stage == "soft_targets":
        reg.log_artifacts(root / P.soft_targets / "manifest.json", "soft_targets")
    elif stage == "distill":
        reg.log_dict_flat("", {"student": p.student.model_dump(mode="json"), "distill": p.distill.model_dump(mode="json")})
        reg.log_artifacts(root / P.models / "distill.json")
    elif stage == "evaluate":
        for f in ("metrics.json", "reliability.png", "confusion.png"):
            reg.log_artifacts(root / P.reports / f)
    elif stage == "checks":
        reg.log_artifacts(root / P.checks, "checks")
    return None
