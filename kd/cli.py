"""`kd`: the command line. It only parses, loads params, calls `kd`/`flows` code and prints.

Heavy libraries (torch, mlflow, prefect, great_expectations, evidently) are imported inside commands,
so `kd --help` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

# Nothing phones home (set before any of these libraries can be imported).
for _var, _val in {
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "EVIDENTLY_DISABLE_TELEMETRY": "1",
}.items():
    os.environ.setdefault(_var, _val)

app = typer.Typer(help="kd: distil a large teacher into a small student, as a repeatable, gated pipeline.", no_args_is_help=True, add_completion=False)

Root = Annotated[Path, typer.Option("--root", help="project root holding params.yaml and dvc.yaml")]
Overrides = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a param, e.g. -s student.train.epochs=5")]


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _params(root: Path, overrides: list[str] | None):
    from kd.config import load_params

    return load_params(root / "params.yaml", overrides)


def _user_errors() -> tuple[type[Exception], ...]:
    """Bad input (config, data files, a teacher to import): one clear message, exit code 2."""
    from kd.config import ConfigError
    from kd.soft_targets import CacheError
    from kd.sources import DataError

    return (ConfigError, DataError, CacheError, FileNotFoundError, ValueError)


def _why(err: Exception, kind: str) -> str:
    return json.dumps({"kind": kind, "message": f"{err}" if kind == "input" else f"{type(err).__name__}: {err}"})


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="config | validate | train_teacher | soft_targets | distill | evaluate | checks")],
    root: Root = Path("."),
    overrides: Overrides = None,
    nproc: Annotated[int, typer.Option(help="processes for soft_targets and distill (torchrun on this machine); 0: distributed.nproc")] = 0,
    member: Annotated[int, typer.Option(help="train_teacher: train only this ensemble member, into the member store")] = -1,
) -> None:
    """Run one pipeline stage (what each dvc.yaml stage calls)."""
    import os

    from kd.stages import DISTRIBUTED, STAGES, error_file, run

    if name not in STAGES:
        _fail(KeyError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}"))
    root, p = root.resolve(), None
    try:
        p = _params(root, overrides)
        if nproc:
            p.distributed.nproc = nproc
        error_file(root, p, name).unlink(missing_ok=True)
        if member >= 0:
            from kd.stages import train_member

            if name != "train_teacher":
                raise ValueError(f"--member is an option of train_teacher, not of {name}")
            result = train_member(root, p, member)
        elif name in DISTRIBUTED and p.distributed.nproc > 1 and "WORLD_SIZE" not in os.environ:
            from kd.distributed import relaunch

            try:
                relaunch(name, root, p.distributed.nproc, [a for o in overrides or [] for a in ("--set", o)])
            except RuntimeError:
                why = error_file(root, p, name)  # a rank's reason, when it stopped on bad input
                if why.exists() and json.loads(why.read_text())["kind"] == "input":
                    raise ValueError(json.loads(why.read_text())["message"]) from None
                raise
            result = DISTRIBUTED[name](root, p)
        else:
            result = run(name, root, p)
    except _user_errors() as err:
        error_file(root, p, name).write_text(_why(err, "input"))
        _fail(err)
    except Exception as err:  # not bad input (a bug, an unreachable server): keep the traceback, still tell the flow why
        error_file(root, p, name).write_text(_why(err, "internal"))
        raise
    if os.environ.get("RANK", "0") == "0":  # one line from a distributed run: rank 0's
        typer.echo(json.dumps(result))


@app.command("run")
def run_pipeline(
    root: Root = Path("."),
    force: Annotated[bool, typer.Option(help="re-run every stage even if DVC finds it up to date")] = False,
    push: Annotated[bool, typer.Option(help="push data, teacher, cache and models to the DVC remote")] = True,
    debug: Annotated[bool, typer.Option(help="show every log line and traceback on the console instead of the log file")] = False,
) -> None:
    """Run the retraining flow on params.yaml: DVC stages under Prefect, MLflow tracking, gated registration.

    The console shows one line per stage and the result; the full log goes to logs/kd-run-<time>.log.
    Bad input (config or data) stops the run with one message and exit code 2; nothing is registered.
    """
    import datetime as dt

    from kd.console import project_lock, quiet

    root = root.resolve()
    try:
        p = _params(root, None)  # fail fast, before any server or stage starts, on a bad params.yaml
        _check_project(root)
    except _user_errors() as err:
        _fail(err)
    with project_lock(root, lambda msg: typer.echo(msg, err=True)):
        if not force and _nothing_to_do(root):
            return
        log = None if debug else root / p.paths.logs / f"kd-run-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
        with quiet(log) as say:
            if log is not None:
                say(f"kd run: full log in {log.relative_to(root)}")
            from flows.retrain import retrain

            state = retrain(root=str(root), force=force, push_remote=push, return_state=True)
    if state.is_failed():
        _fail_run(state.result(raise_on_failure=False), log, root)
    typer.echo("\n" + state.result()["markdown"])


def _check_project(root: Path) -> None:
    from kd.config import ConfigError

    if not (root / "dvc.yaml").exists():
        raise ConfigError(f"{root}: no dvc.yaml here; kd run needs a kd project (dvc.yaml, params.yaml) — use --root")
    if not (root / ".dvc").is_dir():
        raise ConfigError(f"{root}: not a DVC repository; run 'git init && dvc init' first")


def _fail_run(err: BaseException, log: Path | None, root: Path) -> None:
    """One message for a failed run; exit 2 for bad input, 1 for anything else (the log has the trace)."""
    from flows.retrain import BadInput

    where = f" (full log: {log.relative_to(root)})" if log is not None else ""
    typer.secho(f"error: {err}{where}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2 if isinstance(err, BadInput) else 1)


def _nothing_to_do(root: Path) -> bool:
    """Like make's 'nothing to be done': every stage is up to date and this student is already
    published, so no flow run is started (a scheduled deployment run still goes through the flow)."""
    from kd.publish import already_published, unchanged_result
    from kd.stages import STAGES, out_of_date

    p = _params(root, None)
    if not (root / "dvc.lock").exists() or out_of_date(root, p):
        return False
    runs = [{"stage": s, "ran": False, "seconds": 0.0} for s in STAGES]
    last = already_published(root, p, runs)
    if last is None:
        return False
    typer.echo(unchanged_result(root, p, runs, last)["markdown"])
    return True


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="registered model version to make @champion")],
    root: Root = Path("."),
    reason: Annotated[str, typer.Option(help="why, recorded on the version")] = "manual promotion",
) -> None:
    """Give VERSION the alias 'champion' by hand (the former champion becomes 'previous')."""
    from kd import aliases, registry

    p = _params(root, None)
    try:
        moved = aliases.promote(registry.Registry(p.registry, root.resolve()), version, reason=reason, by="kd promote")
    except registry.RegistryError as err:
        _fail(err)
    typer.echo(json.dumps(moved, indent=2))


@app.command()
def rollback(
    root: Root = Path("."),
    reason: Annotated[str, typer.Option(help="why, recorded on the version")] = "manual rollback",
) -> None:
    """Give 'champion' back to the 'previous' version (twice: two champions back; see 'kd status')."""
    from kd import aliases, registry

    p = _params(root, None)
    try:
        moved = aliases.rollback(registry.Registry(p.registry, root.resolve()), reason=reason)
    except registry.RegistryError as err:
        _fail(err)
    typer.echo(json.dumps(moved, indent=2))


@app.command()
def status(root: Root = Path(".")) -> None:
    """Show the registered versions, their aliases and gate decisions, and the @champion history."""
    from kd import registry
    from kd.report import status_markdown

    p = _params(root, None)
    try:
        typer.echo(status_markdown(registry.Registry(p.registry, root.resolve())))
    except registry.RegistryError as err:
        _fail(err)


@app.command()
def serve(
    root: Root = Path("."),
    host: Annotated[str | None, typer.Option(help="address to listen on (serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (serve.port)")] = None,
    backend: Annotated[str | None, typer.Option(help="onnx_int8 | onnx | torch | edge (serve.backend)")] = None,
    log: Annotated[bool | None, typer.Option("--log/--no-log", help="write the prediction log (serve.log)")] = None,
    log_uri: Annotated[str | None, typer.Option(help="prediction log database URL, sqlite:///… or postgresql://… (serve.log_uri)")] = None,
    poll_seconds: Annotated[float | None, typer.Option(help="how often @champion is read (serve.poll_seconds)")] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(help="micro-batching wait, 0 = off (serve.batch_wait_ms)")] = None,
    overrides: Overrides = None,
) -> None:
    """Serve the registry's @champion over HTTP (/predict, /feedback, Open Inference Protocol v2, /metrics), logging
    every prediction. A moved @champion is swapped in without a restart; SIGTERM drains requests and flushes the log."""
    import logging

    from kd.config import ConfigError

    given = {"host": host, "port": port, "backend": backend, "log": log, "log_uri": log_uri, "poll_seconds": poll_seconds,
             "batch_wait_ms": batch_wait_ms}
    options = [f"serve.{k}={json.dumps(v)}" for k, v in given.items() if v is not None]  # JSON is YAML: types kept exactly
    try:
        p = _params(root, [*(overrides or []), *options])
    except ConfigError as err:
        _fail(err)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a service log is no terminal
    from kd.registry import RegistryError
    from kd.serve.app import run
    from kd.serve.champion import LoadError

    try:
        run(root.resolve(), p)
    except (LoadError, RegistryError) as err:
        _fail(err)


@app.command()
def replay(
    source: Annotated[Path | None, typer.Argument(help="csv or parquet rows; default: the project's held-out test split")] = None,
    root: Root = Path("."),
    url: Annotated[str | None, typer.Option(help="the service; default http://<serve.host>:<serve.port>")] = None,
    count: Annotated[int, typer.Option(min=1, help="rows to send")] = 1000,
    rate: Annotated[float, typer.Option(min=0, help="rows per second; 0 = as fast as the service answers")] = 0.0,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight at once")] = 4,
    batch: Annotated[int, typer.Option(min=1, help="rows per request")] = 1,
    shift: Annotated[list[str] | None, typer.Option(help="add to a numeric column: COL=+2.0 (repeatable)")] = None,
    scale: Annotated[list[str] | None, typer.Option(help="multiply a numeric column: COL=1.5 (repeatable)")] = None,
    group_share: Annotated[list[str] | None, typer.Option(help="make a group this share of the rows: COL=VALUE:0.8")] = None,
    feedback: Annotated[float, typer.Option(min=0, max=1, help="share of rows whose true label is sent to /feedback")] = 0.0,
    feedback_delay: Annotated[float, typer.Option(min=0, help="seconds between a prediction and its feedback")] = 1.0,
    label_column: Annotated[str | None, typer.Option(help="the true label's column (data.label_column)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the sampling and the feedback choice")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Send rows to a running 'kd serve' (with injected drift and delayed feedback if asked); print a summary."""
    import asyncio

    from kd import replay as rp

    try:
        p = _params(root, None)
        drift = rp.parse_drift(shift, scale, group_share)
        frame = rp.sample(rp.load_rows(root, p.paths.prepared, source), count, drift, seed)
    except (rp.ReplayError, *_user_errors()) as err:
        _fail(err)
    label = label_column or p.data.label_column
    labels = frame[label].tolist() if label in frame.columns else None
    if feedback and labels is None:
        _fail(rp.ReplayError(f"--feedback needs the true labels: the rows have no column {label!r} (--label-column)"))
    rows = rp.records(frame.drop(columns=[label], errors="ignore"))
    summary = asyncio.run(rp.send(url or f"http://{p.serve.host}:{p.serve.port}", rows, labels, batch, rate, concurrency,
                                  feedback, feedback_delay, seed))
    typer.echo(json.dumps(summary, indent=2) if as_json else rp.summary_markdown(summary))
    if summary["errors"] == summary["requests"]:
        raise typer.Exit(1)


@app.command()
def monitor(
    root: Root = Path("."),
    hours: Annotated[float, typer.Option(help="the window of the prediction log, ending now (0: monitor.window_hours)")] = 0.0,
    trigger: Annotated[bool, typer.Option(help="start the retraining deployment when a signal set to fail is breached")] = True,
    debug: Annotated[bool, typer.Option(help="show every log line on the console")] = False,
) -> None:
    """One monitoring run: the prediction log's window against the champion's reference (drift, disagreement
    with the teacher, estimated and measured accuracy, fairness), recorded in MLflow; retraining on a breach."""
    root = root.resolve()
    try:
        p = _params(root, None)
    except _user_errors() as err:
        _fail(err)
    from kd.console import quiet

    with quiet(None if debug else root / p.paths.logs / "kd-monitor.log"):
        from flows.monitor import monitor as monitor_flow

        state = monitor_flow(root=str(root), hours=hours, trigger=trigger, return_state=True)
    if state.is_failed():
        typer.secho(f"error: {state.result(raise_on_failure=False)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(state.result()["markdown"])


@app.command()
def params(
    root: Root = Path("."),
    reference: Annotated[bool, typer.Option(help="print the configuration reference (every key, default, meaning)")] = False,
) -> None:
    """Print the fully resolved params.yaml (defaults filled in), or the configuration reference."""
    import yaml

    if reference:
        from kd.config import reference_markdown

        typer.echo(reference_markdown(), nl=False)
        return
    try:
        typer.echo(yaml.safe_dump(_params(root, None).to_dict(), sort_keys=False), nl=False)
    except _user_errors() as err:
        _fail(err)


if __name__ == "__main__":
    app()
