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
    from kd.config import ConfigError
    from kd.soft_targets import CacheError
    from kd.sources import DataError

    return (ConfigError, DataError, CacheError, FileNotFoundError, ValueError)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="validate | train_teacher | soft_targets | distill | evaluate | checks")],
    root: Root = Path("."),
    overrides: Overrides = None,
) -> None:
    """Run one pipeline stage (what each dvc.yaml stage calls)."""
    from kd.stages import STAGES, error_file, run

    if name not in STAGES:
        _fail(KeyError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}"))
    root, p = root.resolve(), None
    try:
        p = _params(root, overrides)
        error_file(root, p, name).unlink(missing_ok=True)
        result = run(name, root, p)
    except _user_errors() as err:
        error_file(root, p, name).write_text(str(err))
        _fail(err)
    except Exception as err:  # a bug, not bad input: keep the traceback, still tell the flow why
        error_file(root, p, name).write_text(f"{type(err).__name__}: {err}")
        raise
    typer.echo(json.dumps(result))


@app.command("run")
def run_pipeline(
    root: Root = Path("."),
    force: Annotated[bool, typer.Option(help="re-run every stage even if DVC finds it up to date")] = False,
    push: Annotated[bool, typer.Option(help="push data, teacher, cache and models to the DVC remote")] = True,
) -> None:
    """Run the retraining flow on params.yaml: DVC stages under Prefect, MLflow tracking, gated registration."""
    from kd.config import ConfigError
    from kd.stages import missing_dvc_params

    try:
        _params(root, None)  # fail fast, before any server or stage starts, on a bad params.yaml
        missing = missing_dvc_params(root)
        if missing:
            raise ConfigError(f"{root / 'params.yaml'}: dvc.yaml stages depend on {missing}, which the file does not spell out; "
                              "DVC needs every one present (an empty section such as 'soft_targets: {}' is enough)")
    except _user_errors() as err:
        _fail(err)
    if not force and _nothing_to_do(root.resolve()):
        return
    from flows.retrain import retrain

    state = retrain(root=str(root.resolve()), force=force, push_remote=push, return_state=True)
    if state.is_failed():
        reason = state.result(raise_on_failure=False)
        typer.secho(f"error: the retrain flow failed: {reason}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo("\n" + state.result()["markdown"])


def _nothing_to_do(root: Path) -> bool:
    """Like make's 'nothing to be done': every stage is up to date and this student is already
    published, so no flow run is started (a scheduled deployment run still goes through the flow)."""
    from kd.publish import already_published, unchanged_result
    from kd.stages import STAGES, out_of_date

    p = _params(root, None)
    if not (root / "dvc.lock").exists() or out_of_date(root):
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
    from kd import registry

    p = _params(root, None)
    try:
        moved = registry.Registry(p.registry, root.resolve()).promote(version, reason=reason, by="kd promote")
    except registry.RegistryError as err:
        _fail(err)
    typer.echo(json.dumps(moved, indent=2))


@app.command()
def rollback(
    root: Root = Path("."),
    reason: Annotated[str, typer.Option(help="why, recorded on the version")] = "manual rollback",
) -> None:
    """Give 'champion' back to the 'previous' version."""
    from kd import registry

    p = _params(root, None)
    try:
        moved = registry.Registry(p.registry, root.resolve()).rollback(reason=reason)
    except registry.RegistryError as err:
        _fail(err)
    typer.echo(json.dumps(moved, indent=2))


@app.command()
def status(root: Root = Path(".")) -> None:
    """Show the registered versions, their aliases and gate decisions."""
    from kd import registry

    p = _params(root, None)
    typer.echo(registry.Registry(p.registry, root.resolve()).describe())


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
