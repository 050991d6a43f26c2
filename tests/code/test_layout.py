"""The library stays a library: no Prefect in kd/, MLflow only in the registry adapter, fast CLI start."""

import ast
import subprocess
import sys
from pathlib import Path

KD = Path(__file__).resolve().parents[2] / "kd"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_kd_module_imports_prefect_and_only_registry_imports_mlflow():
    for path in KD.rglob("*.py"):
        found = _imports(path)
        assert "prefect" not in found, path
        if path.name != "registry.py":
            assert "mlflow" not in found, path


def test_cli_help_imports_no_heavy_library():
    code = ("import sys; from kd.cli import app; heavy = {'torch', 'mlflow', 'prefect', 'great_expectations', 'evidently', 'dvc'};"
            "print(sorted(heavy & set(m.split('.')[0] for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_params_fail_before_anything_runs(tmp_path):
    (tmp_path / "params.yaml").write_text("teacher:\n  train: {epochs: -3}\n")
    out = subprocess.run(["kd", "run", "--root", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "teacher.train.epochs" in out.stderr and "greater than or equal to 1" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()
    out = subprocess.run(["kd", "stage", "nope", "--root", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "expected one of config, validate, train_teacher" in out.stderr


def test_kd_run_outside_a_project_says_what_is_missing(tmp_path):
    out = subprocess.run(["kd", "run", "--root", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "no dvc.yaml here" in out.stderr and "Traceback" not in out.stderr


def test_the_library_never_reaches_up_into_flows_even_indirectly():
    """Only the CLI may start a flow: no other kd module imports flows (or prefect) directly or through
    another kd module, counting imports inside functions too."""
    import sys

    sys.path.insert(0, str(KD.parent / "tests" / "code"))
    from test_dvc_deps import _closure
    from test_dvc_deps import _imports as kd_imports

    for path in KD.rglob("*.py"):
        name = ".".join(path.relative_to(KD.parent).with_suffix("").parts).removesuffix(".__init__")
        if name in ("kd.cli", "kd.__main__"):  # the command line: it starts flows
            continue
        reached = _closure(kd_imports(ast.parse(path.read_text()), name))
        for module in reached | {path}:
            found = _imports(module)
            assert not {"flows", "prefect"} & found, f"{name} reaches {module.name}, which imports {sorted({'flows', 'prefect'} & found)}"
