"""Parity with plain PyTorch: `kd run` on MNIST-1D (examples/mnist1d) against `benchmarks/plain_pytorch.py`,
the same recipe in one file with no kd import, seed by seed, side by side.

For each seed: a fresh project (a temp dir holding dvc.yaml, prefect.yaml, kd/, the example's params.yaml with
`seed` set, and its data.csv) runs `kd run --no-push` as a user would (Prefect's temporary API, DVC, MLflow on
SQLite); then the plain script runs with the same seed. Reported:
  - test accuracy of the teacher, the distilled student and the scratch baseline, mean ± std over seeds, for
    both, next to the published MNIST-1D reference numbers (Greydanus 2020);
  - the wall time of the comparable work: kd's train_teacher + soft_targets + distill stages (each as the flow
    times it: `dvc repro --single-item` + the `kd stage` process, its start-up and data loading included)
    against the plain script's whole process (start-up, imports, data loading, teacher, soft targets, student,
    scratch; its evaluation is a few milliseconds), and their ratio;
  - kd's other stages (config, validate, evaluate, checks) and the rest of `kd run` (Prefect's start-up,
    registration, publication) separately;
  - the comparable stages once more, each run directly as `kd stage <name>` (the command dvc.yaml runs), with
    the wall and the CPU seconds of each process, against the plain script's: CPU time is what the work costs
    when other jobs share the machine (wall time then measures the scheduler too).

    python benchmarks/parity.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import kd_run, md_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mnist1d"
COMPARABLE = ("train_teacher", "soft_targets", "distill")
# Greydanus 2020, "Scaling Down Deep Learning" (arXiv:2011.14439), table 1 / the mnist1d README: test accuracy
# on MNIST-1D (4,000 training and 1,000 test examples).
PUBLISHED = {"logistic regression": 0.32, "MLP": 0.68, "CNN": 0.94, "GRU": 0.91, "human expert": 0.96}


def make_project(root: Path, seed: int, quick: bool) -> None:
    for name in ("dvc.yaml", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "kd", root / "kd", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "examples" / "mnist1d").mkdir(parents=True)
    shutil.copy(EXAMPLE / "data.csv", root / "examples" / "mnist1d" / "data.csv")
    params = yaml.safe_load((EXAMPLE / "params.yaml").read_text())
    params["seed"] = seed
    if quick:
        params["teacher"]["train"]["epochs"] = 2
        params["student"]["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=root, check=True)


def kd_project_run(root: Path) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PREFECT_HOME": str(root / ".prefect-home"),  # no state shared with other runs
                        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}
    wall, stages = kd_run(root, env)
    metrics = json.loads((root / "reports" / "evaluate" / "metrics.json").read_text())
    return {"wall_seconds": wall, "stage_seconds": {name: seconds for name, (_, seconds) in stages.items()},
            "test_accuracy": {k: metrics[k]["accuracy"] for k in ("teacher", "student", "scratch")}}


def child_cpu() -> float:
    """User + system CPU seconds of every reaped child process so far (the children's whole trees)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def kd_stages_direct(root: Path) -> dict:
    """The comparable stages again, each as `kd stage <name>` (the command dvc.yaml runs) in its own process:
    wall and CPU seconds of the process (start-up, imports and data loading included), without DVC and
    Prefect. The soft-target cache is removed first so it is rebuilt, not reused (checkpoints are removed by
    the stages themselves when they finish, so the teacher and the students train from scratch)."""
    shutil.rmtree(root / "cache" / "soft_targets", ignore_errors=True)
    out = {}
    for stage in COMPARABLE:
        c0, t0 = child_cpu(), time.perf_counter()
        subprocess.run(["kd", "stage", stage, "--root", str(root)], check=True, capture_output=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        out[stage] = {"wall_seconds": time.perf_counter() - t0, "cpu_seconds": child_cpu() - c0}
    return out


def plain_run(seed: int, quick: bool, tmp: Path) -> dict:
    out_json = tmp / f"plain-{seed}.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "plain_pytorch.py"), "--seed", str(seed), "--out", str(out_json)]
    if quick:
        cmd.append("--quick")
    c0, t0 = child_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    return json.loads(out_json.read_text()) | {"wall_seconds": wall, "cpu_seconds": child_cpu() - c0}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="2 epochs each, for a smoke test")
    a = ap.parse_args()
    load_start = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kd-parity-") as d:
        tmp = Path(d)
        for seed in a.seeds:  # side by side, seed by seed: background load hits both alike
            root = tmp / f"project-{seed}"
            root.mkdir()
            make_project(root, seed, a.quick)
            kd = kd_project_run(root)
            plain = plain_run(seed, a.quick, tmp)
            direct = kd_stages_direct(root)
            kd_work = sum(kd["stage_seconds"].get(s, 0.0) for s in COMPARABLE)
            d_wall = sum(v["wall_seconds"] for v in direct.values())
            d_cpu = sum(v["cpu_seconds"] for v in direct.values())
            runs.append({"seed": seed, "kd": kd, "plain": plain, "kd_direct": direct, "kd_comparable_seconds": kd_work,
                         "plain_comparable_seconds": plain["wall_seconds"], "ratio": kd_work / plain["wall_seconds"],
                         "ratio_direct_wall": d_wall / plain["wall_seconds"], "ratio_direct_cpu": d_cpu / plain["cpu_seconds"]})
            print(f"seed {seed}: kd {kd['test_accuracy']} plain {plain['test_accuracy']} kd work {kd_work:.1f}s "
                  f"plain {plain['wall_seconds']:.1f}s ratio {kd_work / plain['wall_seconds']:.2f}; direct stages wall {d_wall:.1f}s "
                  f"cpu {d_cpu:.1f}s vs plain cpu {plain['cpu_seconds']:.1f}s", file=sys.stderr, flush=True)

    acc_rows = []
    for model in ("teacher", "student", "scratch"):
        k = [r["kd"]["test_accuracy"][model] for r in runs]
        p = [r["plain"]["test_accuracy"][model] for r in runs]
        acc_rows.append([model, mean_std(k), mean_std(p), f"{statistics.mean(k) - statistics.mean(p):+.4f}",
                         " ".join(f"{v:.3f}" for v in k), " ".join(f"{v:.3f}" for v in p)])
    print(md_table(["model", "kd run", "plain PyTorch", "difference of means", "kd per seed", "plain per seed"], acc_rows))
    print("\npublished (Greydanus 2020): " + ", ".join(f"{k} {v:.0%}" for k, v in PUBLISHED.items()))
    time_rows = [[r["seed"], *(f"{r['kd']['stage_seconds'].get(s, 0):.1f}" for s in COMPARABLE), f"{r['kd_comparable_seconds']:.1f}",
                  f"{r['plain_comparable_seconds']:.1f}", f"{r['ratio']:.2f}",
                  *(f"{r['kd']['stage_seconds'].get(s, 0):.1f}" for s in ("config", "validate", "evaluate", "checks")),
                  f"{r['kd']['wall_seconds'] - sum(r['kd']['stage_seconds'].values()):.1f}", f"{r['kd']['wall_seconds']:.1f}"] for r in runs]
    print()
    print(md_table(["seed", "train_teacher s", "soft_targets s", "distill s", "kd comparable s", "plain s", "kd ÷ plain",
                    "config s", "validate s", "evaluate s", "checks s", "rest of kd run s (Prefect, registration)", "kd run wall s"], time_rows))
    print()
    print(md_table(["seed", *(f"kd stage {s} wall / CPU s" for s in COMPARABLE), "kd stages wall s", "plain wall s", "wall ratio",
                    "kd stages CPU s", "plain CPU s", "CPU ratio"],
                   [[r["seed"], *(f"{r['kd_direct'][s]['wall_seconds']:.1f} / {r['kd_direct'][s]['cpu_seconds']:.1f}" for s in COMPARABLE),
                     f"{sum(v['wall_seconds'] for v in r['kd_direct'].values()):.1f}", f"{r['plain']['wall_seconds']:.1f}", f"{r['ratio_direct_wall']:.2f}",
                     f"{sum(v['cpu_seconds'] for v in r['kd_direct'].values()):.1f}", f"{r['plain']['cpu_seconds']:.1f}", f"{r['ratio_direct_cpu']:.2f}"]
                    for r in runs]))
    ratios = [r["ratio"] for r in runs]
    print(f"\nmedian ratio kd ÷ plain over seeds: under kd run {statistics.median(ratios):.2f}; stages alone, wall "
          f"{statistics.median(r['ratio_direct_wall'] for r in runs):.2f}, CPU {statistics.median(r['ratio_direct_cpu'] for r in runs):.2f}")
    write_json("parity", {"command": "python benchmarks/parity.py " + " ".join(sys.argv[1:]), "loadavg_start_end": [load_start, os.getloadavg()],
                          "seeds": a.seeds, "published": PUBLISHED, "runs": runs, "median_ratio": statistics.median(ratios),
                          "median_ratio_direct_wall": statistics.median(r["ratio_direct_wall"] for r in runs),
                          "median_ratio_direct_cpu": statistics.median(r["ratio_direct_cpu"] for r in runs)}, a.quick)


if __name__ == "__main__":
    main()
