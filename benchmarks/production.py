"""The embedded default against the server setup, for the same small pipeline: `kd run` on a fresh project,
(a) embedded — MLflow in the project's SQLite file, Prefect's ephemeral API, a local DVC remote — and (b) the
production layout of infra/ on loopback (infra/loopback.py: MLflow server on PostgreSQL with artifacts in
S3 (moto), Prefect server on PostgreSQL, the DVC remote in S3). Wall time of each stage (as the flow reports
it), of publish (MLflow logging, registration, gates, alias) and push, and in total; median of --repeats runs
per setup, the two setups alternating so the machine's load falls on both.

    python benchmarks/production.py --repeats 3
    python benchmarks/production.py --quick          # 1 run each, a smaller source
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra"))
from loopback import AWS, DVC, env, production_stack  # noqa: E402

STAGE_LINE = re.compile(r"kd: (\w+)\s+(ran|up to date) \(([\d.]+) s\)")
LOG_TIME = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) .*?kd: (\w+)", re.M)


def params(rows: int, i: int) -> dict:
    """A small pipeline (the same in both setups); run i registers under its own names, so no run finds an
    earlier run's student or teacher in a shared registry."""
    return {
        "data": {"source": "synthetic", "sensitive_columns": ["group"],
                 "synthetic": {"n_samples": rows, "n_features": 16, "n_classes": 4, "class_sep": 2.0, "n_transfer": rows // 5}},
        "validate": {"min_group_size": 20},
        "teacher": {"model": {"arch": "mlp", "width": 64, "depth": 2}, "train": {"epochs": 2, "batch_size": 256}},
        "student": {"model": {"arch": "mlp", "width": 16, "depth": 1}, "train": {"epochs": 2, "batch_size": 256}},
        "evaluate": {"latency_runs": 20, "warmup_runs": 2},
        "registry": {"experiment": f"kd-bench-{i}", "model_name": f"kd-student-{i}", "teacher_model_name": f"kd-teacher-{i}"},
    }


def project(root: Path, rows: int, i: int, s3: str | None) -> None:
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    shutil.copytree(REPO / "kd", root / "kd", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params(rows, i), sort_keys=False))
    remote = [["dvc", "remote", "add", "-d", "s3", f"s3://{DVC}/run-{i}"], ["dvc", "remote", "modify", "s3", "endpointurl", s3]] if s3 \
        else [["dvc", "remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote")]]
    for argv in [["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"], *remote,
                 ["git", "add", "-A"], ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"]]:
        subprocess.run(argv, cwd=root, check=True, capture_output=True, env=env())


def kd_run(root: Path, run_env: dict) -> dict:
    """`kd run`: total wall seconds, each stage's seconds (the flow's lines in its log), and the time from the end of
    the last stage to the publish line (MLflow logging, registration, gates, alias) and from there to the end (push)."""
    t0 = time.perf_counter()
    out = subprocess.run(["kd", "run", "--root", str(root)], capture_output=True, text=True, env=run_env | {"OMP_NUM_THREADS": "1"})
    total = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"kd run failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    log = next((root / "logs").glob("kd-run-*.log")).read_text(errors="replace")
    stages = {m[0]: float(m[2]) for m in STAGE_LINE.findall(log)}
    stamps = {name: dt.datetime.strptime(t, "%H:%M:%S.%f") for t, name in LOG_TIME.findall(log)}
    publish = (stamps["publish"] - stamps["checks"]).total_seconds() if {"publish", "checks"} <= stamps.keys() else None
    return {"total_s": total, "stages_s": stages, "publish_s": publish,
            "rest_s": total - sum(stages.values()) - (publish or 0.0), "loadavg": os.getloadavg()}


def main() -> None:
    from _common import bench_args

    a = bench_args(__doc__, lambda ap: (ap.add_argument("--repeats", type=int, default=3), ap.add_argument("--rows", type=int, default=20_000)))
    repeats, rows = (1, 2000) if a.quick else (a.repeats, a.rows)
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {"embedded": [], "servers": []}
    with tempfile.TemporaryDirectory(prefix="kd-prod-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        with production_stack(tmp / "stack", prefix="kd_bench") as s:
            startup = time.perf_counter() - t0
            print(f"servers up in {startup:.1f} s", flush=True)
            for i in range(repeats):
                for setup in ("embedded", "servers"):
                    root = tmp / f"{setup}-{i}"
                    project(root, rows, i, s.s3 if setup == "servers" else None)
                    # one Prefect home per setup (the embedded one's database persists, as ~/.prefect does); on a busy
                    # machine the ephemeral API's start can exceed Prefect's 20 s default
                    run_env = env(PREFECT_HOME=str(tmp / f"prefect-{setup}"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
                    if setup == "servers":
                        run_env |= AWS | {"MLFLOW_TRACKING_URI": s.mlflow, "PREFECT_API_URL": s.prefect_api}
                    r = kd_run(root, run_env)
                    runs[setup].append(r)
                    print(setup, i, f"{r['total_s']:.1f} s", flush=True)
    names = list(runs["embedded"][0]["stages_s"])
    med = {k: {"total_s": statistics.median(r["total_s"] for r in v),
               "publish_s": statistics.median(r["publish_s"] for r in v if r["publish_s"] is not None),
               "rest_s": statistics.median(r["rest_s"] for r in v),
               "stages_s": {n: statistics.median(r["stages_s"].get(n, 0.0) for r in v) for n in names}} for k, v in runs.items()}
    table = [[n, f"{med['embedded']['stages_s'][n]:.1f}", f"{med['servers']['stages_s'][n]:.1f}"] for n in names]
    table += [["publish (MLflow log, register, gates, alias)", f"{med['embedded']['publish_s']:.1f}", f"{med['servers']['publish_s']:.1f}"],
              ["flow start, DVC push, exit", f"{med['embedded']['rest_s']:.1f}", f"{med['servers']['rest_s']:.1f}"],
              ["**total (kd run)**", f"**{med['embedded']['total_s']:.1f}**", f"**{med['servers']['total_s']:.1f}**"]]
    print(md_table(["step", "embedded s", "servers s"], table))
    print(f"median of {repeats}; servers started in {startup:.0f} s (not counted); load average {load[0]:.2f} at the start")
    write_json("production", {"command": "python benchmarks/production.py " + " ".join(sys.argv[1:]), "rows": rows, "repeats": repeats,
                              "loadavg_start": load, "loadavg_end": os.getloadavg(), "servers_startup_s": startup,
                              "note": "shared 2-core machine: other jobs ran alongside (load averages recorded per run)",
                              "median": med, "runs": runs}, a.quick)


if __name__ == "__main__":
    main()
