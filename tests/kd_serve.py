"""`kd serve` as a real process on a free loopback port: the serving tests' server, and any test that serves a
champion it registered."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow_server import free_port

REPO = Path(__file__).resolve().parents[1]
__all__ = ["REPO", "Server", "env", "free_port"]


def env() -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's params.yaml names its registry
    return clean | {"PYTHONPATH": str(REPO), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class Server:
    """`kd serve` as a real process on a free loopback port."""

    def __init__(self, root: Path, *args: str, name: str = "serve"):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err_path = self.root / f"{name}-{self.port}.err"
        self.cmd = [sys.executable, "-m", "kd.cli", "serve", "--root", str(self.root), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(self.cmd, env=env(), stdout=subprocess.DEVNULL, stderr=open(self.err_path, "w"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"kd serve exited with {self.proc.returncode}:\n{self.stderr()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.3)
        self.proc.kill()
        pytest.fail(f"kd serve not ready within 120 s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.err_path.read_text() if self.err_path.exists() else ""

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("kd_serve_log_written_rows_total", 'table="predictions"')."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        raise KeyError(f"{key} not in /metrics")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"kd serve did not stop within {timeout} s of signal {sig}:\n{self.stderr()}")
        return self.proc.returncode
