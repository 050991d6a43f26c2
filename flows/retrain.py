"""The retraining flow: each DVC stage as a Prefect task (DVC decides what is up to date), then MLflow
tracking, gated registration and a pushed DVC remote.

Thin by design: stages live in `kd.stages`, MLflow in `kd.registry`, gates in `kd.gates`; this file
only orders them, retries transient failures, and reports (logs, a markdown artifact, a summary table).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

for _var, _val in {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_var, _val)

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kd.config import RESOLVED, load_params
from kd.lineage import dvc_hashes
from kd.stages import STAGES, error_file


class StageFailed(RuntimeError):
    """A pipeline stage failed on its own: not retried, reported with its reason."""


class BadInput(StageFailed):
    """A stage refused its input (config, data file, teacher to import): the user's to fix."""


def _transient(_task, _run, state) -> bool:
    """Retry only transient failures (DVC's lock held by another process, a timeout, a dropped
    connection), never a stage that failed on its own: retrying that would only fail again, slower."""
    from dvc.lock import LockError

    try:
        state.result()
    except (LockError, TimeoutError, ConnectionError, BlockingIOError):
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


@task(retries=2, retry_delay_seconds=3, retry_condition_fn=_transient)
def reproduce(root: str, stage: str, force: bool = False) -> dict:
    """`dvc repro --single-item <stage>`: runs `kd stage <stage>` only if its deps, params or outs changed."""
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    log = get_run_logger()
    logging.getLogger("dvc").setLevel(logging.WARNING)  # DVC's 'git add dvc.lock' hints are noise here
    t0 = time.perf_counter()
    resolved = Path(root) / RESOLVED
    # compared with the md5 dvc.lock holds from the last completed config stage, not with the file: it may already
    # be newer (`kd run` resolves it before deciding whether there is anything to do)
    before = dvc_hashes(Path(root)).get(RESOLVED)
    with contextlib.chdir(root), Repo(root) as repo:  # DVC resolves targets from the cwd
        changed = force or bool(repo.status(targets=[stage]))
        if changed:
            log.info("stage %s changed: reproducing", stage)
            try:
                repo.reproduce(stage, single_item=True, force=force)
            except ReproductionError as err:
                why = error_file(Path(root), load_params(Path(root) / "params.yaml"), stage)
                if not why.exists():
                    raise StageFailed(f"stage {stage} failed: see the output of 'kd stage {stage}' in the log ({err.__cause__})") from None
                detail = json.loads(why.read_text())
                kind = BadInput if detail["kind"] == "input" else StageFailed
                raise kind(f"stage {stage} failed: {detail['message']}") from None
        else:
            log.info("stage %s is up to date: skipped", stage)
    if stage == "config":  # it runs every time (input hashes); it changed something only if its file did
        changed = force or hashlib.md5(resolved.read_bytes()).hexdigest() != before
    seconds = round(time.perf_counter() - t0, 2)
    log.info("kd: %-14s %s (%.1f s)", stage, "ran" if changed else "up to date", seconds)
    return {"stage": stage, "ran": changed, "seconds": seconds}


@task
def stale(root: str, stage: str) -> bool:
    """Would DVC re-run this stage now?"""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(root) as repo:
        return bool(repo.status(targets=[stage]))


@task
def train_member(root: str, index: int) -> dict:
    """One ensemble member, trained in its own process into the member store (`kd stage train_teacher --member`)."""
    import subprocess

    out = subprocess.run(["kd", "stage", "train_teacher", "--member", str(index), "--root", root], capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        kind = BadInput if out.returncode == 2 else StageFailed
        raise kind(f"teacher member {index} failed: {lines[-1] if lines else 'exit code ' + str(out.returncode)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@flow(name="kd-teacher-members")
def teacher_members(root: str, n: int) -> list[dict]:
    """The ensemble's members at once, as mapped tasks (on the Dask task runner `_member_runner` gives)."""
    from prefect.utilities.annotations import unmapped

    return [f.result() for f in train_member.map(unmapped(root), list(range(n)))]


def _member_runner(p):
    """A Dask task runner: the scheduler at distributed.dask_address, or a local cluster of teacher_workers
    threads (each task's work is its own `kd` process, so threads are enough to run them at once)."""
    from prefect_dask import DaskTaskRunner

    d = p.distributed
    if d.dask_address:
        return DaskTaskRunner(address=d.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": d.teacher_workers, "threads_per_worker": 1, "processes": False})


@task(retries=2, retry_delay_seconds=3)
def push(root: str) -> int:
    """Upload data, teacher, cache and models to the DVC remote (a local directory by default)."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(root) as repo:
        if not repo.config.get("core", {}).get("remote"):
            return 0
        return int(repo.push())


@task
def register(root: str, p, runs: list[dict], reason: str = "") -> dict:
    """Track the run in MLflow, register the student and move @champion only if every gate passes."""
    from kd.publish import publish

    return publish(Path(root), p, runs, reason)


@flow(name="kd-retrain")
def retrain(root: str = ".", force: bool = False, push_remote: bool = True, reason: str = "") -> dict:
    """Validate -> teacher -> soft targets -> distil -> evaluate -> checks, then register and gate.
    `reason`: why this run was started (a schedule, a person, the monitor's breached signals), recorded
    on the MLflow run."""
    root = str(Path(root).resolve())
    p = load_params(Path(root) / "params.yaml")
    runs = []
    for name in STAGES:
        parallel = p.teacher.mode == "ensemble" and p.distributed.teacher_workers > 1 and len(p.teacher.members) > 1
        if name == "train_teacher" and parallel and (force or stale(root, name)):
            teacher_members.with_options(task_runner=_member_runner(p))(root, len(p.teacher.members))
        runs.append(reproduce.with_options(name=name)(root, name, force))
    result = register(root, p, runs, reason)
    get_run_logger().info("kd: %-14s %s", "publish", result["note"])
    if push_remote:
        result["dvc_pushed"] = push(root)
    create_markdown_artifact(key="kd-retrain-summary", markdown=result["markdown"], description="kd retrain: results and gate decisions")
    return result
