"""dvc.yaml is honest about code: each stage lists every kd module its command imports, so a code change
re-runs the stages it can affect; and the layout it templates is the one kd writes to."""

import ast
from pathlib import Path

import pytest
import yaml

from kd.config import PathsParams
from kd.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
KD = REPO / "kd"


def _module_file(name: str) -> Path | None:
    """kd.x.y -> its file (module or package __init__), None for non-kd modules."""
    if name != "kd" and not name.startswith("kd."):
        return None
    base = REPO / Path(*name.split("."))
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return None


def _imports(node: ast.AST, current: str) -> set[str]:
    """kd modules imported anywhere under `node` (top level and inside functions)."""
    found = set()
    pkg = current.rsplit(".", 1)[0]
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            mod = n.module or ""
            if n.level:  # relative import
                mod = ".".join(pkg.split(".")[: len(pkg.split(".")) - n.level + 1] + ([mod] if mod else []))
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in n.names}  # `from kd import data` imports kd.data
    return {m for m in found if _module_file(m) is not None}


def _closure(start: set[str]) -> set[Path]:
    seen: set[str] = {"kd.stages"}  # its other stage functions are not this stage's code
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing kd.a.b runs kd/a/__init__
        path = _module_file(name)
        todo += _imports(ast.parse(path.read_text()), name if path.name != "__init__.py" else name + ".x")
    return {_module_file(m) for m in seen - {"kd.stages"}}


def stage_modules(stage: str) -> set[Path]:
    """Every kd module file the stage's function (with the kd/stages.py helpers it calls, and the module's
    top-level imports) imports, transitively."""
    tree = ast.parse((KD / "stages.py").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = {m for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for m in _imports(n, "kd.stages")}
    todo, seen, found = [STAGES[stage].__name__], set(), set()
    while todo:
        fn = functions[todo.pop()]
        seen.add(fn.name)
        found |= _imports(fn, "kd.stages")
        calls = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} & set(functions)
        todo += [c for c in calls - seen if c not in {f.__name__ for f in STAGES.values()}]
    return _closure(top | found) | {KD / "stages.py"}


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_every_stage_lists_the_kd_modules_it_imports():
    stages = _dvc()["stages"]
    assert list(stages) == list(STAGES), "dvc.yaml stages and kd.stages.STAGES must match, in order"
    problems = []
    for name in STAGES:
        deps = [d for d in stages[name].get("deps", []) if isinstance(d, str)]
        for path in sorted(stage_modules(name)):
            # kd/config reaches every stage through its params (params.resolved.yaml), not as code;
            # only the config stage, which writes that file, depends on the code.
            if path.is_relative_to(KD / "config") and name != "config":
                continue
            if not _covered(path, deps):
                problems.append(f"{name}: imports {path.relative_to(REPO)} but dvc.yaml does not list it")
    assert not problems, "\n".join(problems)


def test_no_stage_lists_code_it_does_not_import():
    """A dep that is not imported re-runs the stage for nothing (and hides a stale list)."""
    stages = _dvc()["stages"]
    extra = []
    for name in STAGES:
        modules = {p.relative_to(REPO).as_posix() for p in stage_modules(name)}
        for d in stages[name].get("deps", []):
            if isinstance(d, str) and d.startswith("kd/") and not any(m == d or m.startswith(d.rstrip("/") + "/") for m in modules):
                extra.append(f"{name}: lists {d}, which it does not import")
    assert not extra, "\n".join(extra)


def test_the_derivation_sees_lazy_imports():
    """The check itself can fail: kd.stages.distill imports kd.distill inside the function, which
    imports kd/losses and kd/hooks at the top."""
    mods = {p.relative_to(REPO).as_posix() for p in stage_modules("distill")}
    assert {"kd/distill.py", "kd/hooks.py", "kd/losses/__init__.py", "kd/losses/hinton.py"} <= mods
    assert "kd/evaluate.py" not in mods


def test_layout_in_dvc_yaml_is_kds_layout():
    (declared,) = [v["paths"] for v in _dvc()["vars"] if "paths" in v]
    assert declared == PathsParams().model_dump()


def test_config_stage_depends_on_the_defaults_and_the_user_file():
    config = _dvc()["stages"]["config"]
    assert "params.yaml" in config["deps"] and "kd/config" in config["deps"]
    for name, stage in _dvc()["stages"].items():
        if name != "config":
            assert all(isinstance(p, dict) and list(p) == ["params.resolved.yaml"] for p in stage["params"]), name


@pytest.mark.parametrize("kind", ["csv", "parquet", "text"])
def test_an_edited_source_file_changes_the_resolved_params(tmp_path, kind):
    """The config stage writes each named input file's md5 into params.resolved.yaml, the file every stage's
    DVC params come from: editing the data in place must re-run the pipeline, whatever the source kind."""
    import pandas as pd

    from kd.config import RESOLVED, parse_params
    from kd.stages import config

    name = "reviews.parquet" if kind == "parquet" else "reviews.csv"
    frame = pd.DataFrame({"text": ["good tea", "stale bread"] * 20, "label": ["great", "other"] * 20})
    write = (lambda f: f.to_parquet(tmp_path / name)) if kind == "parquet" else (lambda f: f.to_csv(tmp_path / name, index=False))
    write(frame)
    data = {"source": f"{kind}:{name}"} | ({} if kind == "text" else {"feature_columns": [], "categorical_columns": ["text"]})
    p = parse_params({"data": data} | ({"teacher": {"model": {"arch": "minilm"}}, "student": {"model": {"arch": "embbag"}}} if kind == "text" else {}))
    assert config(tmp_path, p)["changed"]
    before = yaml.safe_load((tmp_path / RESOLVED).read_text())["inputs"]["source"]
    assert len(before) == 32 and not config(tmp_path, p)["changed"]  # an md5; unchanged file, unchanged params
    write(frame.assign(text=frame["text"].str.upper()))
    assert config(tmp_path, p)["changed"]
    assert yaml.safe_load((tmp_path / RESOLVED).read_text())["inputs"]["source"] != before
