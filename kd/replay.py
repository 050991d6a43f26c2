"""`kd replay`: send rows to a running `kd serve`, optionally drifted, optionally with delayed true labels.

Rows come from a csv/parquet file or the project's held-out split (`<prepared>/raw/test.parquet`, written by
the validate stage). Drift is injected before sending, in this order:

    --group-share col=value:0.8   resample so rows with col == value make up 80% of those sent
    --scale col=1.5               multiply a numeric column (x -> 1.5 x)
    --shift col=+2.0              add to a numeric column (x -> x + 2)

The label column is not sent; with `--feedback 0.5` the true label of a random half of the rows goes to
/feedback `--feedback-delay` seconds after its prediction (labels that arrive later, as in production).
Sensitive columns are sent with the rows (the service logs them). It sends `--count` rows in requests of
`--batch`, at most `--concurrency` at a time, paced to `--rate` rows/s (0: as fast as the service answers),
then prints a summary. Latency percentiles are numpy's (linear interpolation between order statistics).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


class ReplayError(ValueError):
    """A replay that cannot start as asked; the message names the option or file."""


@dataclass
class Drift:
    shift: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    group_share: dict[str, tuple[str, float]] = field(default_factory=dict)


def _pairs(items: list[str], option: str, example: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        col, sep, value = item.partition("=")
        if not sep or not col or not value:
            raise ReplayError(f"{option} {item!r}: expected {example}")
        out.append((col, value))
    return out


def parse_drift(shift: list[str] | None, scale: list[str] | None, group_share: list[str] | None) -> Drift:
    drift = Drift()
    for option, items, target in (("--shift", shift, drift.shift), ("--scale", scale, drift.scale)):
        for col, value in _pairs(items, option, "COLUMN=NUMBER, e.g. age=+2.0"):
            try:
                target[col] = float(value)
            except ValueError:
                raise ReplayError(f"{option} {col}={value}: {value!r} is not a number") from None
    for col, value in _pairs(group_share, "--group-share", "COLUMN=VALUE:SHARE, e.g. sex=Female:0.8"):
        group, sep, share = value.rpartition(":")
        try:
            s = float(share)
        except ValueError:
            s = -1.0
        if not sep or not group or not 0 <= s <= 1:
            raise ReplayError(f"--group-share {col}={value}: expected COLUMN=VALUE:SHARE with a share in [0, 1], e.g. sex=Female:0.8")
        drift.group_share[col] = (group, s)
    return drift


def load_rows(root: Path, prepared: str, source: Path | None) -> pd.DataFrame:
    """The rows to replay: a csv/parquet file, or the project's held-out test split."""
    path = Path(source) if source is not None else Path(root) / prepared / "raw" / "test.parquet"
    if not path.exists():
        hint = "" if source is not None else " (the held-out split the validate stage writes: run 'kd run' or 'kd stage validate', or pass a file)"
        raise ReplayError(f"{path}: no such file{hint}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ReplayError(f"{path}: expected a .csv or .parquet file")


def sample(frame: pd.DataFrame, count: int, drift: Drift, seed: int) -> pd.DataFrame:
    """`count` rows of `frame` with the drift applied (resampled with replacement when count exceeds the rows)."""
    if frame.empty:
        raise ReplayError("the source has no rows")
    rng = np.random.default_rng(seed)
    for col in [*drift.shift, *drift.scale, *drift.group_share]:
        if col not in frame.columns:
            raise ReplayError(f"column {col!r} is not in the source; it has {list(frame.columns)[:20]}")
    for col in [*drift.shift, *drift.scale]:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise ReplayError(f"column {col!r} is not numeric: --shift/--scale apply to numbers")

    def pick(pool: np.ndarray, n: int) -> np.ndarray:
        if n == 0:
            return pool[:0]
        if len(pool) == 0:
            raise ReplayError("a --group-share asks for rows from a group the source does not have")
        return rng.choice(pool, n, replace=n > len(pool))

    idx = np.arange(len(frame))
    for col, (value, share) in drift.group_share.items():
        mask = frame[col].astype(str).to_numpy()[idx] == value
        n_in = int(round(count * share))
        idx = np.concatenate([pick(idx[mask], n_in), pick(idx[~mask], count - n_in)])
    if len(idx) != count or not drift.group_share:
        idx = pick(idx, count)
    out = frame.iloc[rng.permutation(idx)].reset_index(drop=True)
    for col, factor in drift.scale.items():
        out[col] = out[col] * factor
    for col, delta in drift.shift.items():
        out[col] = out[col] + delta
    return out


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: missing values as null (JSON has no NaN)."""
    obj = frame.astype(object).where(frame.notna(), None)
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in obj.to_dict("records")]


async def send(url: str, rows: list[dict], labels: list | None, batch: int = 1, rate: float = 0.0, concurrency: int = 4,
               feedback: float = 0.0, feedback_delay: float = 1.0, seed: int = 0, timeout: float = 30.0) -> dict:
    """Post `rows` to `url`/predict and feedback to `url`/feedback; returns the summary."""
    import httpx

    rng = np.random.default_rng(seed + 1)
    chunks = [list(range(i, min(i + batch, len(rows)))) for i in range(0, len(rows), batch)]
    per_second = rate / batch if rate > 0 else 0.0
    give = rng.random(len(rows)) < feedback if labels is not None and feedback > 0 else np.zeros(len(rows), bool)
    status: dict[str, int] = {"ok": 0, "4xx": 0, "5xx": 0, "errors": 0}
    latencies: list[float] = []
    versions: dict[str, int] = {}
    due: list[tuple[float, str, str]] = []  # (time to send, request_id, label)
    fb = {"sent": 0, "ok": 0, "failed": 0}
    errors: list[str] = []
    next_chunk = 0
    start = time.perf_counter()

    async def worker(client):
        nonlocal next_chunk
        while next_chunk < len(chunks):
            k = next_chunk
            next_chunk += 1
            if per_second:
                await asyncio.sleep(max(0.0, start + k / per_second - time.perf_counter()))
            body = json.dumps({"rows": [rows[i] for i in chunks[k]]}, allow_nan=False)
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict", content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError as err:
                status["errors"] += 1
                errors.append(f"{type(err).__name__}: {err}")
                continue
            latencies.append(time.perf_counter() - t0)
            key = "ok" if r.status_code == 200 else "4xx" if r.status_code < 500 else "5xx"
            status[key] += 1
            if key != "ok":
                errors.append(f"{r.status_code}: {r.text[:200]}")
                continue
            out = r.json()
            versions[out["model_version"]] = versions.get(out["model_version"], 0) + len(chunks[k])
            for i, pred in zip(chunks[k], out["predictions"]):
                if give[i]:
                    due.append((time.perf_counter() + feedback_delay, pred["request_id"], str(labels[i])))

    async def feedback_sender(client, done: asyncio.Event):
        while True:
            now = time.perf_counter()
            ready = [d for d in due if d[0] <= now]
            if ready:
                for d in ready:
                    due.remove(d)
                for i in range(0, len(ready), 500):
                    part = ready[i:i + 500]
                    fb["sent"] += len(part)
                    try:
                        r = await client.post("/feedback", json=[{"request_id": rid, "label": lab} for _, rid, lab in part])
                        fb["ok" if r.status_code == 202 else "failed"] += len(part)
                        if r.status_code != 202:
                            errors.append(f"feedback {r.status_code}: {r.text[:200]}")
                    except httpx.HTTPError as err:
                        fb["failed"] += len(part)
                        errors.append(f"feedback {type(err).__name__}: {err}")
            elif done.is_set() and not due:
                return
            await asyncio.sleep(0.05 if due or not done.is_set() else 0)

    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, limits=limits) as client:
        done = asyncio.Event()
        fb_task = asyncio.create_task(feedback_sender(client, done))
        await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))
        elapsed = time.perf_counter() - start
        done.set()
        await fb_task
    lat = np.asarray(latencies) * 1000
    return {"url": url, "requests": len(chunks), "rows": len(rows), **status, "seconds": round(elapsed, 3),
            "rows_per_second": round(sum(versions.values()) / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99), "max": _pct(lat, 100)},
            "versions": versions, "feedback": fb, "first_errors": errors[:5]}


def _pct(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 3) if len(a) else None


def summary_markdown(s: dict) -> str:
    lat = s["latency_ms"]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}"
    lines = ["| requests | rows | ok | 4xx | 5xx | errors | p50 ms | p99 ms | rows/s | versions | feedback sent (ok) |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {s['requests']} | {s['rows']} | {s['ok']} | {s['4xx']} | {s['5xx']} | {s['errors']} | {fmt(lat['p50'])} | {fmt(lat['p99'])} "
             f"| {s['rows_per_second']:g} | {', '.join(f'v{v}: {n}' for v, n in sorted(s['versions'].items())) or '-'} "
             f"| {s['feedback']['sent']} ({s['feedback']['ok']}) |"]
    if s["first_errors"]:
        lines += ["", "first errors:"] + [f"  {e}" for e in s["first_errors"]]
    return "\n".join(lines)
