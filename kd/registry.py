"""The MLflow adapter: tracking (a parent run per pipeline run, a child run per stage) and the model
registry (versions, lineage tags, gate tags, the `champion` / `previous` aliases).

This is the only `kd` module that imports mlflow. Default store: SQLite at `<root>/mlflow.db`, with
artifacts under `<root>/mlartifacts`, so `mlflow ui --backend-store-uri sqlite:///mlflow.db` shows
everything and no server is needed.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kd.config import RegistryParams
from kd.gates import Gate

CHAMPION, PREVIOUS = "champion", "previous"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked; nothing was changed."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Registry:
    def __init__(self, rp: RegistryParams, root: Path):
        self.root = Path(root)
        self.name = rp.model_name
        self.uri = rp.uri(self.root)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client = MlflowClient(self.uri, self.uri)
        self.experiment = rp.experiment

    # ------------------------------------------------------------------ tracking
    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = (self.root / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite:") else None
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def start_run(self, name: str, parent_run_id: str | None = None, tags: dict | None = None):
        return mlflow.start_run(experiment_id=self.experiment_id(), run_name=name, parent_run_id=parent_run_id,
                                nested=parent_run_id is not None, tags=tags)

    @staticmethod
    def log_dict_flat(prefix: str, d: dict) -> None:
        """Log a nested dict as params with dotted keys (`teacher.train.lr`)."""
        flat: dict[str, Any] = {}

        def walk(p: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{p}.{k}" if p else str(k), x)
            else:
                flat[p] = v

        walk(prefix, d)
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    @staticmethod
    def active_run_id() -> str:
        return mlflow.active_run().info.run_id

    @staticmethod
    def log_metrics(metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    @staticmethod
    def set_tags(tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @staticmethod
    def log_artifacts(path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    @staticmethod
    def log_input(features, targets, name: str, digest: str, source: str, context: str) -> None:
        """Record a data set used by the run (`mlflow.log_input`), identified by its DVC hash."""
        import warnings

        with warnings.catch_warnings():  # a local path matches two equivalent source types; MLflow picks one
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            ds = mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest[:36], source=source)
        mlflow.log_input(ds, context=context)

    def find_run(self, tags: dict[str, str]) -> str | None:
        """The earliest run carrying all these tags (e.g. the run that trained a given teacher)."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id()], query, max_results=1, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    @staticmethod
    def log_student(model, example, onnx_files: list[Path]) -> str:
        """Log the student as an MLflow PyTorch model (pt2: no pickle) with signature and input example."""
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            out = model(torch.from_numpy(example)).numpy()
        info = mlflow.pytorch.log_model(
            model, name="student", input_example=example, signature=infer_signature(example, out),
            serialization_format="pt2", pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )
        for f in onnx_files:
            mlflow.log_artifact(str(f), artifact_path="onnx")
        return info.model_uri

    # ------------------------------------------------------------------ registry
    def _version(self, alias: str):
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def champion(self):
        return self._version(CHAMPION)

    def register(self, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description="Students distilled by kd; @champion serves.")
        # register_model links the logged model (models:/m-...) as a tracking server requires;
        # the run is recorded as a tag so the version can be traced to its pipeline run.
        mv = mlflow.register_model(model_uri, self.name, tags={k: str(v) for k, v in tags.items()} | {"pipeline_run_id": run_id})
        return str(mv.version)

    def find_version(self, tag: str, value: str) -> str | None:
        for mv in self.client.search_model_versions(f"name = '{self.name}'"):
            if mv.tags.get(tag) == value:
                return str(mv.version)
        return None

    def record_gates(self, version: str, gates: list[Gate]) -> None:
        for g in gates:
            value = "" if g.value is None else f" value={g.value:.6g}"
            threshold = "" if g.threshold is None else f" threshold={g.threshold:.6g}"
            self.client.set_model_version_tag(self.name, version, f"gate.{g.name}", f"{g.decision}{value}{threshold}")
        failed = [g.name for g in gates if g.blocks]
        self.client.set_model_version_tag(self.name, version, "gates.passed", str(not failed).lower())
        self.client.set_model_version_tag(self.name, version, "gates.failed", ",".join(failed) or "none")

    def promote(self, version: str, reason: str, by: str) -> dict:
        """Move `champion` to `version` and `previous` to the former champion, recording who and why."""
        try:
            target = self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise RegistryError(f"model {self.name!r} has no version {version!r}; see 'kd status'") from None
        old = self.champion()
        if old is not None and old.version == target.version:
            raise RegistryError(f"version {version} is already @{CHAMPION}")
        if old is not None:
            self.client.set_registered_model_alias(self.name, PREVIOUS, old.version)
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        for k, v in {"promoted_at": _now(), "promoted_by": by, "promotion_reason": reason}.items():
            self.client.set_model_version_tag(self.name, target.version, k, v)
        return {"champion": str(target.version), "previous": None if old is None else str(old.version)}

    def rollback(self, reason: str) -> dict:
        """Give `champion` back to `previous`; the demoted version is tagged with when and why."""
        prev, cur = self._version(PREVIOUS), self.champion()
        if prev is None:
            raise RegistryError(f"model {self.name!r} has no @{PREVIOUS} version to roll back to")
        self.client.set_registered_model_alias(self.name, CHAMPION, prev.version)
        self.client.delete_registered_model_alias(self.name, PREVIOUS)
        if cur is not None:
            self.client.set_model_version_tag(self.name, cur.version, "rolled_back_at", _now())
            self.client.set_model_version_tag(self.name, cur.version, "rollback_reason", reason)
        self.client.set_model_version_tag(self.name, prev.version, "promoted_at", _now())
        self.client.set_model_version_tag(self.name, prev.version, "promotion_reason", f"rollback: {reason}")
        return {"champion": str(prev.version), "demoted": None if cur is None else str(cur.version)}

    def describe(self) -> str:
        try:
            versions = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException:
            versions = []
        if not versions:
            return f"no versions of {self.name!r} registered at {self.uri}"
        aliases: dict[str, list[str]] = {}
        for a, v in (self.client.get_registered_model(self.name).aliases or {}).items():
            aliases.setdefault(str(v), []).append(a)
        rows = ["| version | aliases | accuracy | gates | failed |", "|---|---|---|---|---|"]
        for mv in sorted(versions, key=lambda m: int(m.version)):
            t = mv.tags
            rows.append(f"| {mv.version} | {','.join(aliases.get(str(mv.version), []))} | {t.get('accuracy', '')} | "
                        f"{t.get('gates.passed', '')} | {t.get('gates.failed', '')} |")
        return "\n".join(rows)

    def download(self, run_id: str, path: str, dst: Path) -> Path | None:
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=self.uri))
        except (MlflowException, OSError):
            return None


def load_torch_model(uri: str, tracking_uri: str):
    """Load a PyTorch model logged to MLflow (e.g. `models:/kd-student@champion`) from that store."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.pytorch.load_model(uri, map_location="cpu")
