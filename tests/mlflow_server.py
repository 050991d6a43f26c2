"""`mlflow server` as a real process on a loopback port, for the tests that talk to a tracking server."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(port: int, store: str, artifacts: Path, log: Path, timeout: float = 240) -> subprocess.Popen:
    """Starts `mlflow server` (one worker, artifacts proxied to `artifacts`) and waits for /health.
    The wait is generous: on a loaded 2-core machine the first schema migrations take more than a minute."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", store, "--artifacts-destination", str(artifacts)], stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"mlflow server did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
