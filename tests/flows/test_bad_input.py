"""Every kind of bad input stops `kd run` with one message naming the culprit — no Python traceback
(that is in the log file), a non-zero exit code — and registers nothing."""

import copy
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from kdproject import TINY, make_project

pytestmark = pytest.mark.flow


def _frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame(x, columns=["f0", "f1", "f2"]).assign(label=(x[:, 0] > 0).astype(int))


def _csv(df):
    return lambda root: df.to_csv(root / "data.csv", index=False)


DATA = {  # name -> (write the data file, data.source, what the message must name)
    "missing file": (lambda root: None, "csv:nope.csv", ["nope.csv", "file not found"]),
    "empty file": (lambda root: (root / "data.csv").write_text(""), "csv:data.csv", ["data.csv", "empty"]),
    "binary file": (lambda root: (root / "data.csv").write_bytes(bytes(range(256)) * 40), "csv:data.csv", ["data.csv", "cannot be read as csv"]),
    "wrong delimiter": (lambda root: _frame().to_csv(root / "data.csv", index=False, sep=";"), "csv:data.csv", ["data.csv", "';'-separated"]),
    "unknown extension": (lambda root: _frame().to_csv(root / "data.xlsx", index=False), "csv:data.xlsx", ["data.xlsx", "unknown file type"]),
    "missing label": (_csv(_frame().drop(columns="label")), "csv:data.csv", ["missing label column 'label'"]),
    "single class": (_csv(_frame().assign(label=1)), "csv:data.csv", ["label", "at least 2 classes"]),
    "NaN": (_csv(_frame().assign(f1=lambda d: d.f1.where(d.index % 40 != 3))), "csv:data.csv", ["'f1'", "not_be_null"]),
    "inf": (_csv(_frame().assign(f2=lambda d: d.f2.where(d.index != 5, np.inf))), "csv:data.csv", ["'f2'", "finite"]),
    "string in numbers": (_csv(_frame().astype({"f0": object}).assign(f0=lambda d: d.f0.where(d.index != 9, "oops"))), "csv:data.csv",
                          ["'f0'", "oops"]),
}
CONFIG = {  # name -> (params.yaml text, what the message must name)
    "unknown key": ("student:\n  trian: {epochs: 3}\n", ["student.trian", "unknown key"]),
    "wrong type": ("teacher:\n  train: {epochs: many}\n", ["teacher.train.epochs", "integer"]),
    "impossible value": ("distill:\n  temperature: -1\n", ["distill.temperature", "greater than 0"]),
    "unknown architecture": ("student:\n  model: {arch: transformr}\n", ["student.model.arch", "unknown architecture 'transformr'"]),
    "unknown loss": ("distill:\n  losses: {kd: 1, fitnet: 1}\n", ["distill.losses", "unknown loss 'fitnet'"]),
    "broken YAML": ("data: [unclosed\n", ["params.yaml", "not valid YAML"]),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    from prefect.settings import PREFECT_API_URL

    root = make_project(tmp_path_factory.mktemp("badinput"), copy.deepcopy(TINY))
    return root, os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}


def _kd_run(root, env):
    return subprocess.run(["kd", "run", "--root", str(root), "--no-push"], capture_output=True, text=True, env=env, timeout=600)


def _assert_clean_failure(out, root, names):
    assert out.returncode == 2, (out.returncode, out.stdout[-3000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.count("error:") == 1, out.stderr
    for name in names:
        assert name in out.stderr, (name, out.stderr)
    assert not (root / "mlflow.db").exists() and not (root / "models").exists()


@pytest.mark.parametrize("case", list(DATA))
def test_bad_data_file(project, case):
    root, env = project
    write, source, names = DATA[case]
    for f in ("data.csv", "data.xlsx"):
        (root / f).unlink(missing_ok=True)
    write(root)
    params = copy.deepcopy(TINY)
    params["data"] = {"source": source, "classes": [] if case == "single class" else ["0", "1"]}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    out = _kd_run(root, env)
    _assert_clean_failure(out, root, names + ["stage validate failed"])
    log = sorted((root / "logs").glob("kd-run-*.log"))[-1]
    assert f"full log: logs/{log.name}" in out.stderr and log.stat().st_size > 0


@pytest.mark.parametrize("case", list(CONFIG))
def test_bad_config(project, case):
    root, env = project
    text, names = CONFIG[case]
    (root / "params.yaml").write_text(text)
    _assert_clean_failure(_kd_run(root, env), root, names)


def test_debug_shows_the_traceback_of_a_bad_input(project):
    root, env = project
    (root / "params.yaml").write_text(yaml.safe_dump(TINY | {"data": {"source": "csv:nope.csv"}}))
    out = subprocess.run(["kd", "run", "--root", str(root), "--no-push", "--debug"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2 and "nope.csv" in out.stderr
    assert "Traceback" in out.stdout + out.stderr  # Prefect's task failure, on the console this time
