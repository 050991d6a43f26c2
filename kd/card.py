"""A bundle's card (`predictor.json`): what the model reads and returns, so a reader needs nothing else —
kind, classes, label column, input schema (each feature with its kind and allowed categories), sensitive
columns and the fitted preprocessing. Written by the stages, read by `kd.predictor`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = 1


@dataclass
class Feature:
    name: str
    kind: str  # "number" | "category" | "text"
    categories: list[str] | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind} | ({"categories": self.categories} if self.kind == "category" else {})


def describe(pre, classes: list[str], label: str, sensitive: list[str], kind: str, extra: dict | None = None) -> dict:
    """The predictor.json of a bundle for a fitted `kd.data.Preprocessor`."""
    features = [Feature(c, "number") for c in pre.numeric] + [Feature(c, "category", list(v)) for c, v in pre.categories.items()]
    if pre.text:
        features = [Feature(pre.text["column"], "text")]
    return {"format": FORMAT, "kind": kind, "classes": list(classes), "label_column": label, "sensitive": list(sensitive),
            "features": [f.to_dict() for f in features], "preprocessor": pre.__dict__} | (extra or {})


def write_teacher_card(out: Path, prep) -> None:
    """Make the teacher directory (kd.teacher layout) a bundle too: raw rows in, through this run's preprocessing."""
    meta = describe(prep.preprocessor, prep.classes, prep.meta["label_column"], prep.meta["sensitive_columns"], "teacher")
    (Path(out) / "predictor.json").write_text(json.dumps(meta, indent=2))


def bundle_dir(model_dir: Path) -> Path:
    """The bundle inside a downloaded MLflow model directory (its pyfunc `data` entry)."""
    import yaml

    mlmodel = yaml.safe_load((Path(model_dir) / "MLmodel").read_text())
    data = mlmodel.get("flavors", {}).get("python_function", {}).get("data")
    if mlmodel.get("flavors", {}).get("python_function", {}).get("loader_module") != "kd.predictor" or not data:
        raise ValueError(f"{model_dir}: not a kd predictor (its MLmodel has no kd.predictor pyfunc flavor); "
                         "it was registered by another tool or an older kd")
    return Path(model_dir) / data
