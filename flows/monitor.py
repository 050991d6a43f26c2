"""The monitoring flow: read a window of the prediction log, compare it with the champion's training
reference (data drift, prediction drift, teacher-student disagreement, a confidence-based accuracy
estimate; accuracy and fairness where labels came back), record everything in MLflow, and when a signal
set to fail is breached start the retraining deployment — at most once per cooldown, with the reason.

Thin by design: the signals are `kd.monitor` functions (the gates' own drift and fairness code), MLflow
is reached through `kd.registry`; this file orders them, retries I/O and decides.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

for _var, _val in {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}.items():
    os.environ.setdefault(_var, _val)

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kd.config import Params, load_params


@task(retries=2, retry_delay_seconds=5)
def read_window(uri: str, since: dt.datetime, until: dt.datetime, limit: int):
    """The logged predictions of the window (the newest `limit`), with feedback labels joined."""
    from kd.serve.log import read_window as read

    return read(uri, since=since, until=until, limit=limit)


@task(retries=2, retry_delay_seconds=5)
def champion(root: str, p: Params, work: str) -> dict:
    """The serving champion's student and teacher bundles, downloaded from the registry."""
    from kd import aliases
    from kd.card import bundle_dir
    from kd.registry import Registry

    reg = Registry(p.registry, Path(root))
    stack = aliases.stack(reg)
    if not stack:
        raise RuntimeError(f"model {reg.name!r} has no @champion to monitor; run 'kd run' first")
    mv = reg.version(stack[-1])
    student = bundle_dir(reg.download_model(f"models:/{reg.name}/{mv.version}", Path(work) / "student"))
    teacher = bundle_dir(reg.download_model(f"models:/{reg.teacher_name}/{mv.tags['teacher_version']}", Path(work) / "teacher"))
    return {"version": str(mv.version), "tags": dict(mv.tags), "student": str(student), "teacher": str(teacher)}


@task
def signals(window, champ: dict, p: Params, out: str) -> dict:
    """Every signal of `kd.monitor` on the window; gates with decisions, and the numbers behind them."""
    from kd import monitor as M
    from kd.gates import skipped
    from kd.predictor import Predictor

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    student = Predictor(Path(champ["student"]), backend="torch")
    teacher = Predictor(Path(champ["teacher"]))
    reference = student.reference()
    features = [f.name for f in student.features]
    window = window[window["model_version"].astype(str) == champ["version"]] if len(window) else window
    result: dict = {"rows": int(len(window)), "version": champ["version"], "features": features}
    if len(window) < p.monitor.min_rows:
        why = f"{len(window)} logged rows from v{champ['version']} in the window, fewer than monitor.min_rows ({p.monitor.min_rows})"
        return result | {"gates": [skipped("monitor", why).to_dict()], "note": why}
    window = window.sample(n=min(len(window), p.monitor.max_rows), random_state=0).sort_values("time")
    probs = M.probabilities(window, student.classes)
    window = window.assign(confidence=probs.max(1))
    gates = []
    text = [f.name for f in student.features if f.kind == "text"]
    result["data_drift"], g = M.data_drift(reference, window, features, p, out_dir, text)
    gates.append(g)
    result["prediction_drift"], g = M.prediction_drift(reference, window, p, out_dir)
    gates.append(g)
    rows = window.head(p.monitor.teacher_rows)
    groups = {s: rows[s].astype(str).to_numpy() for s in student.sensitive if s in rows}
    ref_rows = reference.head(p.monitor.teacher_rows)
    ref_student = student.predict_proba(ref_rows[features], checked=False)
    result["disagreement"] = M.disagreement(teacher.predict_proba(rows[features]), M.probabilities(rows, student.classes), groups)
    result["disagreement_reference"] = M.disagreement(teacher.predict_proba(ref_rows[features]), ref_student)
    gates.append(M.disagreement_gate(result["disagreement"], result["disagreement_reference"], p))
    tags = champ["tags"]
    test_acc, test_ece = float(tags.get("accuracy", "nan")), float(tags.get("ece", "nan"))
    temperature = float(json.loads((Path(champ["student"]) / "predictor.json").read_text()).get("calibration", {}).get("temperature", 1.0))
    result["estimated_accuracy"] = M.confidence_estimate(probs, temperature)
    gates.append(M.estimate_gate(result["estimated_accuracy"], test_acc, test_ece, p))
    labelled = window[window["feedback"].notna()]
    if len(labelled):
        window.loc[labelled.index, "teacher_label"] = teacher.predict_proba(labelled[features]).argmax(1)
    result["feedback"], fg = M.feedback_quality(window, student.classes, student.sensitive, test_acc, p, out_dir)
    gates += fg
    return result | {"gates": [g.to_dict() for g in gates]}


@task
def record(root: str, p: Params, result: dict, out: str, decision: dict) -> str:
    """One run in the monitoring experiment: metrics, the decision, the HTML reports."""
    from kd.registry import Registry

    reg = Registry(p.registry.model_copy(update={"experiment": p.monitor.experiment}), Path(root))
    flat = {"rows": result["rows"], "estimated_accuracy": result.get("estimated_accuracy", float("nan"))}
    for key in ("data_drift", "prediction_drift"):
        if key in result:
            flat[f"{key}.share"] = result[key]["drifted_share"]
    for key in ("disagreement", "disagreement_reference"):
        if key in result:
            flat[f"{key}.top1"], flat[f"{key}.kl"] = result[key]["top1"], result[key]["kl"]
    if "accuracy" in result.get("feedback", {}):
        flat["feedback.accuracy"] = result["feedback"]["accuracy"]
    with reg.start_run(f"monitor {dt.datetime.now():%Y-%m-%d %H:%M}", tags={"kind": "monitor", "model_version": result["version"]}) as run:
        reg.log_metrics(flat)
        reg.set_tags({f"gate.{g['name']}": "pass" if g["passed"] else g["action"] for g in result["gates"]}
                     | {"triggered": str(decision["triggered"]).lower(), "reason": decision["reason"][:500]})
        (Path(out) / "monitor.json").write_text(json.dumps(result | {"decision": decision}, indent=2, default=str))
        reg.log_artifacts(Path(out), "monitor")
        return run.info.run_id


@task(retries=2, retry_delay_seconds=5)
def start_retraining(root: str, p: Params, reason: str) -> str:
    """Start the retraining deployment (Prefect `run_deployment`, not waiting for it); returns the flow run id."""
    from prefect.deployments import run_deployment

    run = run_deployment(p.monitor.deployment, parameters={"root": root, "reason": reason}, timeout=0, tags=["kd", "monitor-triggered"])
    return str(run.id)


@task(retries=2, retry_delay_seconds=5)
def export_inputs(root: str, p: Params, window, columns: list[str]) -> str:
    """The window's raw inputs appended to the production transfer set (a Parquet directory DVC tracks:
    `data.transfer: parquet:<monitor.transfer_path>` lets the retraining run distil on them)."""
    import subprocess

    root = Path(root)
    folder = root / p.monitor.transfer_path
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    window[columns].tail(p.monitor.transfer_max_rows).to_parquet(folder / f"inputs-{stamp}.parquet", index=False)
    subprocess.run(["dvc", "add", "-q", str(folder.relative_to(root))], cwd=root, check=True, capture_output=True)
    return str(folder)


def cooling_down(root: str, p: Params) -> str:
    """'' if a retraining run may start now, else why not (the last one the monitor started, and when)."""
    from kd.registry import Registry

    reg = Registry(p.registry.model_copy(update={"experiment": p.monitor.experiment}), Path(root))
    runs = reg.find_runs({"kind": "monitor", "triggered": "true"})
    if not runs:
        return ""
    last = dt.datetime.fromtimestamp(max(r.info.start_time for r in runs) / 1000, dt.UTC)
    wait = last + dt.timedelta(hours=p.monitor.cooldown_hours) - dt.datetime.now(dt.UTC)
    return f"a retraining run was started at {last:%Y-%m-%d %H:%M} UTC; cooling down for {wait}" if wait.total_seconds() > 0 else ""


@flow(name="kd-monitor")
def monitor(root: str = ".", hours: float = 0.0, trigger: bool = True) -> dict:
    """Compare a window of logged predictions with the champion's reference; retrain on a breach."""
    root = str(Path(root).resolve())
    p = load_params(Path(root) / "params.yaml")
    log = get_run_logger()
    until = dt.datetime.now(dt.UTC)
    since = until - dt.timedelta(hours=hours or p.monitor.window_hours)
    uri = p.serve.log_url(root)
    out = Path(root) / p.paths.monitor
    with tempfile.TemporaryDirectory(prefix="kd-monitor-") as work:
        window = read_window(uri, since, until, max(p.monitor.max_rows * 5, 10_000))
        champ = champion(root, p, work)
        result = signals(window, champ, p, str(out))
    breached = [g for g in result["gates"] if g["action"] == "fail" and not g["passed"]]
    reason = "; ".join(f"{g['name']}: {g['detail']}" for g in breached)
    decision = {"breached": [g["name"] for g in breached], "reason": reason, "triggered": False, "flow_run": None}
    if breached and trigger and p.monitor.trigger:
        wait = cooling_down(root, p)
        if wait:
            decision["note"] = wait
        else:
            if p.monitor.transfer_export and len(window):
                decision["exported"] = export_inputs(root, p, window, result["features"])
            decision["flow_run"] = start_retraining(root, p, f"monitor: {reason}"[:1000])
            decision["triggered"] = True
    result["run_id"] = record(root, p, result, str(out), decision)
    result["decision"] = decision
    table = "\n".join(["| signal | decision | detail |", "|---|---|---|"] + [
        f"| {g['name']} | {'pass' if g['passed'] else g['action']} | {g['detail']} |" for g in result["gates"]])
    summary = f"## kd monitor: v{result['version']}, {result['rows']} logged rows\n\n{table}\n\n" + (
        f"**Retraining started** (flow run {decision['flow_run']}): {reason}" if decision["triggered"]
        else f"No retraining: {decision.get('note') or reason or 'no signal breached'}")
    create_markdown_artifact(key="kd-monitor-summary", markdown=summary, description="kd monitor: signals and decision")
    log.info("kd: %s", summary.splitlines()[-1])
    result["markdown"] = summary
    return json.loads(json.dumps(result, default=str))
