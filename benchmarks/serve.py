"""kd serve vs `mlflow models serve` (the peer) on the same champion, side by side on this machine.

The champion: an Adult-shaped student bundle built by kd's own code (`kd.data` preprocessing of
examples/adult/data.csv — 5 numeric and 5 categorical features, sex and race kept as sensitive columns — an
mlp 8x1 student, its ONNX, int8 and edge graphs; the weights are left untrained, which changes no cost), logged
to a SQLite MLflow registry in a temporary directory and promoted to @champion.

Servers, each one uvicorn process, all started before the first measurement:
  - peer:           mlflow models serve -m models:/kd-student@champion --env-manager local  (1 worker, its default)
  - kd, log on:     kd serve (onnx_int8, the prediction log on SQLite in the temporary directory)
  - kd, log off:    kd serve --no-log
  - kd, batching:   kd serve with micro-batching (serve.batch_wait_ms=2, batch_max_rows=64), log on
The load generator (benchmarks/_loadgen.py: closed loop, keep-alive connections, pre-encoded requests, no HTTP
library) runs as its own process and reports its own CPU use. Nothing is pinned by default: the machine's other
tenants use both cores, and pinning a server to one of them only halves what it can get (`--pin` puts servers
on CPU 0 and the load generator on CPU 1). Requests carry the same test rows
(features and the sensitive columns) to every server: `{"rows": [...]}` for kd, `{"dataframe_records": [...]}`
for the peer. Cells: batch 1 at concurrency 1 and 16, batch 64 at concurrency 1; every cell is run on every server
in turn, for `--rounds` rounds (interleaved, so the other tenants of the machine weigh on all alike). After a
cell, a server with a log is given the time its writer needs to catch up (buffer and spill files empty), and the
server's CPU time (its process tree, /proc) over the cell and the catch-up is divided by the requests it answered:
work the writer defers is charged to the cell that caused it. Reported per cell: median and best round, p50/p99,
CPU per request, catch-up time. Comparisons (kd vs the peer, log on vs off) are medians of per-round ratios —
the two sides of a ratio ran seconds apart, under the same load from the machine's other tenants. After the
last round the kd servers with a log get SIGTERM, and the rows in their log are compared with the rows they
answered (every 200 the load generator received, warm-ups included).

Run: python benchmarks/serve.py [--quick] [--rounds 5] [--seconds 4]   (full: about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from _common import md_table, write_json

REPO = Path(__file__).resolve().parents[1]
LOADGEN = Path(__file__).resolve().parent / "_loadgen.py"
CELLS = [(1, 1), (1, 16), (64, 1)]  # (rows per request, concurrency)
SERVER_CPU, LOADGEN_CPU = 0, 1
PIN = False  # --pin


def build_champion(tmp: Path) -> tuple[Path, list[dict]]:
    """A kd project in `tmp` whose SQLite registry holds the Adult-shaped student as @champion; returns the
    project root and the test rows (features + sensitive columns) the requests carry."""
    from kd import aliases, data, models, sources
    from kd.bundle import write_student_bundle
    from kd.config import RegistryParams, parse_params
    from kd.registry import Registry

    raw = yaml.safe_load((REPO / "examples" / "adult" / "params.yaml").read_text())
    p = parse_params({"data": raw["data"], "student": raw["student"]})
    prep = data.prepare(data.split(sources.load_source(p.data, base=REPO), p.data, p.seed), p.data)
    model = models.build(p.student.model, prep.input_shape, prep.n_classes)
    models.save(model, p.student.model, prep.input_shape, prep.classes, tmp / "model.pt")
    reference = prep.raw["train"].head(2000).assign(__prediction=prep.classes[0], __confidence=0.5)
    bundle = write_student_bundle(tmp / "bundle", tmp / "model.pt", prep, True, reference, {})
    root = tmp / "project"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "params.yaml").write_text(yaml.safe_dump({"registry": {"tracking_uri": uri}}))
    reg = Registry(RegistryParams(tracking_uri=uri, experiment="bench"), root)
    features = [c for c in prep.raw["test"].columns if c not in (*p.data.sensitive_columns, p.data.label_column)]
    with reg.start_run("bench"):
        model_uri = reg.log_predictor(bundle, "student", prep.raw["test"][features].head(5))
    aliases.promote(reg, reg.register(model_uri, {"kd.candidate": "bench"}), reason="benchmark", by="benchmarks/serve.py")
    rows = prep.raw["test"].drop(columns=[p.data.label_column]).head(64)
    return root, json.loads(rows.to_json(orient="records"))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (the peer's CLI runs uvicorn as a child)."""
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def _pinned(cpu: int):
    return (lambda: os.sched_setaffinity(0, {cpu})) if PIN else None


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict, health: str, body_key: str, log_uri: str | None, tmp: Path):
        self.name, self.body_key, self.log_uri = name, body_key, log_uri
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err = open(tmp / f"{name.replace(' ', '_').replace(',', '')}.err", "w")
        self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=self.err,
                                     preexec_fn=_pinned(SERVER_CPU))
        self.health = health
        self.answered_rows = 0

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.err.name}")
            try:
                if urllib.request.urlopen(self.url + self.health, timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready within {timeout} s; see {self.err.name}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def start_servers(root: Path, tmp: Path) -> list[Server]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "PYTHONPATH": str(REPO), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    kd = [sys.executable, "-m", "kd.cli", "serve", "--root", str(root)]
    peer_env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    servers = [
        Server("peer (mlflow models serve)", [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/kd-student@champion",
                                               "--env-manager", "local", "--host", "127.0.0.1", "--workers", "1"],
               peer_env, "/ping", "dataframe_records", None, tmp),
        Server("kd, log on", [*kd, "--log-uri", f"sqlite:///{tmp / 'log-on.db'}", "-s", f"serve.log_spill_dir={tmp / 'spill-on'}"],
               env, "/v2/health/ready", "rows", f"sqlite:///{tmp / 'log-on.db'}", tmp),
        Server("kd, log off", [*kd, "--no-log"], env, "/v2/health/ready", "rows", None, tmp),
        Server("kd, micro-batching", [*kd, "--log-uri", f"sqlite:///{tmp / 'log-batch.db'}", "--batch-wait-ms", "2",
                                      "-s", f"serve.log_spill_dir={tmp / 'spill-batch'}"],
               env, "/v2/health/ready", "rows", f"sqlite:///{tmp / 'log-batch.db'}", tmp),
    ]
    for s in servers:
        s.wait_ready()
    return servers


def _drain(server: Server, timeout: float = 300) -> float:
    """Seconds until the server's log has written everything it was given (its buffer and spill files empty)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        log = json.loads(urllib.request.urlopen(server.url + "/health", timeout=5).read())["log"]
        if log["buffered_rows"] == 0 and log["spill_pending_rows"] == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    raise RuntimeError(f"{server.name}: the log did not catch up within {timeout} s")


def cell(server: Server, rows: list[dict], batch: int, concurrency: int, seconds: float, warmup: float, tmp: Path) -> dict:
    """One load run on one server. A server with a log is then given the time its writer needs to catch up, and its
    CPU until then is counted: work a writer defers (a backlog, spilled rows) is charged to the cell that caused it."""
    body = tmp / f"body-{server.body_key}-{batch}.json"
    if not body.exists():
        body.write_text(json.dumps({server.body_key: rows[:batch]}))
    cpu0 = tree_cpu_seconds(server.proc.pid)
    out = subprocess.run([sys.executable, str(LOADGEN), f"{server.url}/{'invocations' if server.body_key != 'rows' else 'predict'}", str(body),
                          "--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup)],
                         capture_output=True, text=True, check=True, preexec_fn=_pinned(LOADGEN_CPU))
    result = json.loads(out.stdout)
    result["drain_seconds"] = round(_drain(server), 3) if server.log_uri else 0.0
    result["server_cpu_ms_per_request"] = round((tree_cpu_seconds(server.proc.pid) - cpu0) * 1000 / max(1, result["all_ok"]), 4)
    server.answered_rows += result["all_ok"] * batch
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one short round (a smoke test)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--pin", action="store_true", help="servers on CPU 0, the load generator on CPU 1")
    a = ap.parse_args()
    global PIN
    PIN = a.pin
    rounds, seconds, warmup = (1, 1.5, 0.5) if a.quick else (a.rounds, a.seconds, a.warmup)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kd-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        root, rows = build_champion(tmp)
        servers = start_servers(root, tmp)
        runs: dict[tuple[str, int, int], list[dict]] = {}
        try:
            for r in range(rounds):
                for batch, conc in CELLS:
                    for s in servers:
                        res = cell(s, rows, batch, conc, seconds, warmup, tmp)
                        runs.setdefault((s.name, batch, conc), []).append(res)
                        print(f"round {r + 1}/{rounds} {s.name:28s} batch {batch:2d} conc {conc:2d}: {res['requests_per_second']:8.1f} req/s "
                              f"p50 {res['p50_ms']} p99 {res['p99_ms']} ms  loadgen cpu {res['loadgen_cpu_share']}", file=sys.stderr)
        finally:
            logs = {}
            for s in servers:
                code = s.stop()
                if s.log_uri:
                    from kd.serve.log import counts

                    logs[s.name] = {"answered_rows": s.answered_rows, "logged_rows": counts(s.log_uri)["predictions"], "exit": code}
    load_after = os.getloadavg()
    cells = []
    for (name, batch, conc), res in runs.items():
        med = lambda k: statistics.median(x[k] for x in res)
        cells.append({"server": name, "batch": batch, "concurrency": conc, "requests_per_second": round(med("requests_per_second"), 1),
                      "best_requests_per_second": max(x["requests_per_second"] for x in res),
                      "rows_per_second": round(med("requests_per_second") * batch, 1), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                      "cpu_ms_per_request": med("server_cpu_ms_per_request"), "drain_seconds": med("drain_seconds"),
                      "non_200": sum(x["requests"] - x["ok"] for x in res), "loadgen_cpu_share": max(x["loadgen_cpu_share"] for x in res),
                      "rounds": [x["requests_per_second"] for x in res]})
    payload = {"setup": {"rounds": rounds, "seconds": seconds, "warmup": warmup, "cells": CELLS, "pinned": PIN, "cpus": os.cpu_count(), "load_average_before": load_before,
                         "load_average_after": load_after, "bundle": "Adult-shaped mlp 8x1 student, onnx_int8"},
               "cells": cells, "log": logs, "aims": aims(runs, cells, logs)}
    path = write_json("serve", payload, a.quick)
    print(report(payload))
    print(f"\nwritten {path}")


def _get(cells, name, batch, conc) -> dict:
    return next(c for c in cells if c["server"] == name and c["batch"] == batch and c["concurrency"] == conc)


def _paired(runs: dict, a: str, b: str, batch: int, conc: int, key: str) -> float:
    """Median over rounds of a's figure / b's figure in the same round (pairs share the machine's mood)."""
    return statistics.median(x[key] / y[key] for x, y in zip(runs[(a, batch, conc)], runs[(b, batch, conc)]))


def aims(runs: dict, cells: list[dict], logs: dict) -> list[dict]:
    peer, on, off = "peer (mlflow models serve)", "kd, log on", "kd, log off"
    out = []
    for conc in (1, 16):
        ratio = _paired(runs, on, peer, 1, conc, "requests_per_second")
        out.append({"aim": f"throughput vs peer, batch 1, concurrency {conc} (kd with its log)", "value": round(ratio, 2),
                    "target": ">= 2.0", "met": ratio >= 2.0})
    p99 = _get(cells, on, 1, 16)["p99_ms"]
    out.append({"aim": "kd p99 at concurrency 16, batch 1 (ms)", "value": p99, "target": "<= 20", "met": p99 <= 20})
    for batch, conc in CELLS:
        cost = 1 - _paired(runs, on, off, batch, conc, "requests_per_second")
        cpu = _paired(runs, on, off, batch, conc, "server_cpu_ms_per_request") - 1
        out.append({"aim": f"cost of the log, batch {batch}, concurrency {conc}: throughput (CPU per request)",
                    "value": f"{cost:.1%} ({cpu:+.1%})", "target": "<= 15%", "met": cost <= 0.15})
    lost = sum(v["answered_rows"] - v["logged_rows"] for v in logs.values())
    out.append({"aim": "rows lost (answered - logged, all kd servers with a log)", "value": lost, "target": "0", "met": lost == 0})
    return out


def report(payload: dict) -> str:
    rows = [[c["server"], c["batch"], c["concurrency"], f"{c['requests_per_second']:.0f}", f"{c['best_requests_per_second']:.0f}",
             f"{c['rows_per_second']:.0f}", f"{c['p50_ms']:.2f}", f"{c['p99_ms']:.2f}", f"{c['cpu_ms_per_request']:.3f}",
             f"{c['drain_seconds']:.1f}", c["non_200"], f"{c['loadgen_cpu_share']:.0%}"] for c in payload["cells"]]
    rows.sort(key=lambda r: (r[1], r[2]))
    text = md_table(["server", "batch", "concurrency", "req/s (median)", "req/s (best)", "rows/s", "p50 ms", "p99 ms",
                     "server CPU ms/req", "log catch-up s", "non-200", "loadgen CPU"], rows)
    text += "\n\n" + md_table(["aim", "value", "target", "met"], [[x["aim"], x["value"], x["target"], "yes" if x["met"] else "**no**"]
                                                                  for x in payload["aims"]])
    text += "\n\n" + md_table(["server", "rows answered", "rows logged", "exit"], [[k, v["answered_rows"], v["logged_rows"], v["exit"]]
                                                                                for k, v in payload["log"].items()])
    s = payload["setup"]
    text += f"\n\nload average before/after: {s['load_average_before'][0]:.2f} / {s['load_average_after'][0]:.2f} on {s['cpus']} CPUs"
    return text


if __name__ == "__main__":
    main()
