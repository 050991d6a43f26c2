"""Params of `kd serve`: the prediction service for @champion, its limits and its prediction log.

Not a pipeline stage: no dvc.yaml stage reads this section, and it is left out of the config hash in a
version's lineage (how a model is served does not change what was trained). `kd serve` options override it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from kd.config.base import Section


class ServeParams(Section):
    host: str = "127.0.0.1"
    """address to listen on (0.0.0.0 accepts connections from other machines)"""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port of the service"""
    backend: Literal["onnx_int8", "onnx", "torch", "edge"] = "onnx_int8"
    """how the student runs: onnxruntime int8, onnxruntime fp32, torch, or the edge graph (preprocessing inside)"""
    threads: int = Field(1, ge=1)
    """inference threads (onnxruntime/torch): 1 keeps a small model's latency flat on a busy machine"""
    poll_seconds: float = Field(10.0, gt=0)
    """how often @champion is read; a moved alias is downloaded, warmed up and swapped in without a restart"""
    cache_dir: str = ""
    """where champion versions are downloaded to (relative to the project); empty: a temporary directory removed at exit"""
    # Limits: a request beyond them is refused with 413 before any work is done on it.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    """largest request body accepted (413 beyond)"""
    max_rows: int = Field(1000, ge=1)
    """most rows in one request (413 beyond)"""
    # Micro-batching: off by default, because on this machine it did not pay (benchmarks/serve.py measures it).
    batch_wait_ms: float = Field(0.0, ge=0, le=100)
    """micro-batching: how long a request may wait for others to share one model call; 0 turns it off"""
    batch_max_rows: int = Field(64, ge=1)
    """micro-batching: most rows in one model call"""
    log: bool = True
    """write every prediction and every feedback label to the prediction log"""
    log_uri: str = ""
    """SQLAlchemy URL of the prediction log (sqlite:///PATH or postgresql://…); empty: $KD_SERVE_LOG_URI, else sqlite:///<project>/inference.db"""
    log_flush_seconds: float = Field(0.2, gt=0)
    """how often buffered log rows are written (in batches, by a writer thread off the request path)"""
    log_batch_rows: int = Field(2000, ge=1)
    """most rows per database write"""
    # The buffer bounds memory while the database is away; rows beyond it go to disk, never nowhere.
    log_buffer_rows: int = Field(20_000, ge=1)
    """rows held in memory while the database is unreachable or behind; beyond this they spill to disk"""
    log_spill_dir: str = ""
    """where log rows spill (append-only JSON lines, fsync'd) and are replayed from; relative to the project; empty: inference-spill"""
    log_timeout_seconds: float = Field(5.0, gt=0)
    """bound on one database call (connect, lock wait, statement), so a dead database cannot stall the writer"""
    log_retry_seconds: float = Field(2.0, gt=0)
    """wait between write attempts while the database is unreachable"""

    def log_url(self, root: str | Path) -> str:
        """The prediction log's URL: the configured one, $KD_SERVE_LOG_URI (production), or the project's SQLite file."""
        return self.log_uri or os.environ.get("KD_SERVE_LOG_URI") or f"sqlite:///{(Path(root) / 'inference.db').resolve()}"

    def spill_path(self, root: str | Path) -> Path:
        """The spill directory (a relative one is under the project root)."""
        return (Path(root) / (self.log_spill_dir or "inference-spill")).resolve()
