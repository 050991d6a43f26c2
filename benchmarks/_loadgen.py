"""A closed-loop HTTP/1.1 load generator that costs the server under test as little as possible: one asyncio
process (uvloop), `concurrency` keep-alive connections, each sending one pre-encoded request, reading the
response (Content-Length framed) and sending the next. No HTTP library sits in the loop, so at the rates a
single-process Python server reaches the generator uses a fraction of a core (its CPU time is reported).

Run: python benchmarks/_loadgen.py URL BODY_FILE --concurrency 16 --seconds 8 --warmup 2   (prints JSON)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from urllib.parse import urlsplit

import numpy as np


async def _connection(host: str, port: int, request: bytes, stop_at: float, record_from: float, out: dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            body = await reader.readexactly(length)
            t1 = time.perf_counter()
            if status == 200:
                out["all_ok"] += 1  # warm-up included: what the server answered, for the log comparison
            if t0 >= record_from:
                out["latency"].append(t1 - t0)
                out["status"][status] = out["status"].get(status, 0) + 1
                if status == 200 and out["version_key"]:
                    out["bodies"] += 1
                    if out["bodies"] % 50 == 1:  # sample the answering version without parsing every body
                        version = json.loads(body).get(out["version_key"])
                        out["versions"][str(version)] = out["versions"].get(str(version), 0) + 1
    finally:
        writer.close()


async def run(url: str, body: bytes, concurrency: int, seconds: float, warmup: float, version_key: str) -> dict:
    u = urlsplit(url)
    host, port = u.hostname, u.port or 80
    request = (f"POST {u.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    out = {"latency": [], "status": {}, "versions": {}, "bodies": 0, "version_key": version_key, "all_ok": 0}
    start = time.perf_counter()
    record_from, stop_at = start + warmup, start + warmup + seconds
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(_connection(host, port, request, stop_at, record_from, out) for _ in range(concurrency)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.perf_counter() - record_from
    lat = np.asarray(out["latency"]) * 1000
    ok = out["status"].get(200, 0)
    return {"requests": len(lat), "ok": ok, "all_ok": out["all_ok"], "status": {str(k): v for k, v in out["status"].items()}, "seconds": round(elapsed, 3),
            "requests_per_second": round(len(lat) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "loadgen_cpu_share": round((cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / (time.perf_counter() - start), 3),
            "versions_sampled": out["versions"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("body_file")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--version-key", default="")
    a = ap.parse_args()
    with open(a.body_file, "rb") as f:
        body = f.read()
    coro = run(a.url, body, a.concurrency, a.seconds, a.warmup, a.version_key)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
