"""The MLflow adapter: tracking (a parent run per pipeline run, a child run per stage) and the model
registry (versions, tags, aliases), as thin calls. Promotion logic lives in `kd.aliases`, publication in
`kd.publish`; this is the only `kd` module that imports mlflow.

Default store: SQLite at `<root>/mlflow.db`, artifacts under `<root>/mlartifacts`, so `mlflow ui
--backend-store-uri sqlite:///mlflow.db` shows everything and no server is needed. Every MLflow failure
(an unreachable server, a refused request) surfaces as a `RegistryError` naming the store: never as a
skipped gate or a silently missing artifact.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kd.config import RegistryParams


class RegistryError(RuntimeError):
    """A registry operation that failed or cannot be done as asked; the message names the store."""


class Registry:
    def __init__(self, rp: RegistryParams, root: Path):
        self.root = Path(root)
        self.name = rp.model_name
        self.teacher_name = rp.teacher_model_name
        self.uri = rp.uri(self.root)
        user_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        for k, v in user_env.items():  # MLflow exports the URI to the environment; keep the user's (or none)
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        self.client = MlflowClient(self.uri, self.uri)
        self.experiment = rp.experiment

    @contextlib.contextmanager
    def errors(self, doing: str):
        """Turn MLflow's failures into one RegistryError that says what was being done, and where."""
        try:
            yield
        except MlflowException as err:
            first = str(err.message if hasattr(err, "message") else err).strip().splitlines()[0][:300]
            raise RegistryError(f"MLflow at {self.uri}: {doing} failed: {first}") from None
        except (OSError, ConnectionError) as err:
            raise RegistryError(f"MLflow at {self.uri}: {doing} failed: {type(err).__name__}: {str(err)[:300]}") from None

    # ------------------------------------------------------------------ tracking
    def experiment_id(self) -> str:
        with self.errors(f"reading experiment {self.experiment!r}"):
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is not None:
                return exp.experiment_id
            location = (self.root / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite:") else None
            return self.client.create_experiment(self.experiment, artifact_location=location)

    def start_run(self, name: str, parent_run_id: str | None = None, tags: dict | None = None):
        experiment = self.experiment_id()
        with self.errors(f"starting run {name!r}"):
            return mlflow.start_run(experiment_id=experiment, run_name=name, parent_run_id=parent_run_id,
                                    nested=parent_run_id is not None, tags=tags)

    def log_dict_flat(self, prefix: str, d: dict) -> None:
        """Log a nested dict as params with dotted keys (`teacher.train.lr`)."""
        flat: dict[str, Any] = {}

        def walk(p: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{p}.{k}" if p else str(k), x)
            else:
                flat[p] = v

        walk(prefix, d)
        with self.errors("logging params"):
            mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    @staticmethod
    def active_run_id() -> str:
        return mlflow.active_run().info.run_id

    def log_metrics(self, metrics: dict[str, float]) -> None:
        with self.errors("logging metrics"):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def set_tags(self, tags: dict[str, Any]) -> None:
        with self.errors("setting run tags"):
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        with self.errors(f"logging {path.name}"):
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            elif path.exists():
                mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_input(self, features, targets, name: str, digest: str, source: str, context: str) -> None:
        """Record a data set used by the run (`mlflow.log_input`), identified by its DVC hash."""
        with warnings.catch_warnings(), self.errors(f"logging input {name}"):
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            ds = mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest[:36], source=source)
            mlflow.log_input(ds, context=context)

    def find_runs(self, tags: dict[str, str], include_unfinished: bool = True) -> list:
        """Runs carrying all these tags, oldest first (e.g. the run that trained a given teacher)."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        experiment = self.experiment_id()
        with self.errors("searching runs"):
            runs = self.client.search_runs([experiment], query, max_results=1000, order_by=["attributes.start_time ASC"])
        return [r for r in runs if include_unfinished or r.info.status == "FINISHED"]

    def delete_run(self, run_id: str) -> None:
        """Soft-delete a run (an interrupted publication attempt); `mlflow gc` purges it."""
        with self.errors(f"deleting run {run_id}"):
            for child in self.client.search_runs([self.experiment_id()], f"tags.mlflow.parentRunId = '{run_id}'"):
                self.client.delete_run(child.info.run_id)
            self.client.delete_run(run_id)

    def log_predictor(self, bundle: Path, name: str, example) -> str:
        """Log a kd predictor bundle as an MLflow pyfunc model whose loader is `kd.predictor` (no pickle:
        loading runs kd's code on the bundle's JSON, weights and ONNX files). Returns the model URI."""
        from mlflow.models import infer_signature

        with warnings.catch_warnings(), self.errors(f"logging the {name} model"):
            warnings.simplefilter("ignore")  # MLflow's notes on integer columns and environment inference
            info = mlflow.pyfunc.log_model(
                name=name, loader_module="kd.predictor", data_path=str(bundle), input_example=example,
                signature=infer_signature(example), pip_requirements=["kd", "onnxruntime", "pandas", "pyarrow"],
            )
        return info.model_uri

    def download_run_file(self, run_id: str, path: str, dst: Path) -> Path:
        with self.errors(f"downloading {path} of run {run_id}"):
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=self.uri))

    def download_model(self, uri: str, dst: Path) -> Path:
        """A registered model's files (e.g. `models:/kd-student@champion`) in a local directory."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        with self.errors(f"downloading {uri}"):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=self.uri))

    # ------------------------------------------------------------------ registry
    def version_by_alias(self, alias: str, name: str | None = None):
        """The version holding `alias`, or None if no version holds it (any other failure is an error)."""
        name = name or self.name
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise RegistryError(f"MLflow at {self.uri}: reading @{alias} of {name!r} failed: {str(err)[:300]}") from None

    def version(self, version: str, name: str | None = None):
        name = name or self.name
        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise RegistryError(f"MLflow at {self.uri}: reading version {version} of {name!r} failed: {str(err)[:300]}") from None

    def versions(self, name: str | None = None) -> list:
        name = name or self.name
        with self.errors(f"listing versions of {name!r}"):
            return sorted(self.client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version))

    def find_version(self, tag: str, value: str, name: str | None = None) -> str | None:
        for mv in self.versions(name):
            if mv.tags.get(tag) == value:
                return str(mv.version)
        return None

    def register(self, model_uri: str, tags: dict[str, Any], name: str | None = None, description: str = "") -> str:
        """A new version of `name` with its tags set in the same request (so a version never lacks them)."""
        name = name or self.name
        with self.errors(f"registering {model_uri} as {name!r}"):
            try:
                self.client.get_registered_model(name)
            except MlflowException as err:
                if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise
                self.client.create_registered_model(name, description=description)
            # register_model links the logged model (models:/m-...) as a tracking server requires
            mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
        return str(mv.version)

    def set_version_tags(self, version: str, tags: dict[str, Any], name: str | None = None) -> None:
        name = name or self.name
        with self.errors(f"tagging version {version} of {name!r}"):
            for k, v in tags.items():
                self.client.set_model_version_tag(name, str(version), k, str(v))

    def model_tags(self) -> dict[str, str]:
        with self.errors(f"reading {self.name!r}"):
            try:
                return dict(self.client.get_registered_model(self.name).tags or {})
            except MlflowException as err:
                if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    return {}
                raise

    def aliases(self) -> dict[str, str]:
        with self.errors(f"reading the aliases of {self.name!r}"):
            try:
                return {a: str(v) for a, v in (self.client.get_registered_model(self.name).aliases or {}).items()}
            except MlflowException as err:
                if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    return {}
                raise

    def set_model_tag(self, key: str, value: str) -> None:
        with self.errors(f"tagging {self.name!r}"):
            self.client.set_registered_model_tag(self.name, key, value)

    def delete_model_tag(self, key: str) -> None:
        with self.errors(f"untagging {self.name!r}"):
            try:
                self.client.delete_registered_model_tag(self.name, key)
            except MlflowException as err:
                if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise

    def set_alias(self, alias: str, version: str | None) -> None:
        """Point `alias` at `version`, or remove it (None)."""
        with self.errors(f"moving @{alias} of {self.name!r}"):
            if version is not None:
                self.client.set_registered_model_alias(self.name, alias, str(version))
                return
            try:
                self.client.delete_registered_model_alias(self.name, alias)
            except MlflowException as err:
                if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                    raise
