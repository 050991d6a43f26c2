"""Promotion gates: thresholds, retention against the teacher, change against the champion."""

import subprocess
import sys
from pathlib import Path

import pytest

from kd.config import GateParams
from kd.gates import Gate, blocked, model_gates, table

METRICS = {"teacher": {"accuracy": 0.98}, "student": {"accuracy": 0.95, "ece": 0.04, "latency_ms_p50": 0.2, "size_bytes": 12000}}


def _by_name(gates):
    return {g.name: g for g in gates}


def test_all_pass_and_champion_gate_skipped_without_champion():
    gates = _by_name(model_gates(METRICS, GateParams(min_accuracy=0.9, min_retention=0.95), None))
    assert not blocked(list(gates.values()))
    assert gates["champion_delta"].action == "skip" and gates["champion_delta"].detail == "no current champion"
    assert gates["retention"].threshold == pytest.approx(0.95 * 0.98)


@pytest.mark.parametrize(
    "params,champion,failed",
    [
        (GateParams(min_accuracy=0.96), None, {"accuracy"}),
        (GateParams(max_latency_ms=0.1), None, {"latency_ms_p50"}),
        (GateParams(max_size_bytes=10000), None, {"size_bytes"}),
        (GateParams(min_retention=0.98), None, {"retention"}),
        (GateParams(max_champion_drop=0.01), 0.97, {"champion_delta"}),
        (GateParams(max_champion_drop=0.03), 0.97, set()),
    ],
)
def test_each_gate_blocks_on_its_own(params, champion, failed):
    champ = None if champion is None else {"version": "3", "accuracy": champion, "error": ""}
    assert {g.name for g in blocked(model_gates(METRICS, params, champ))} == failed


def test_a_champion_that_cannot_be_evaluated_blocks_with_the_reason():
    champ = {"version": "3", "accuracy": None, "error": "champion v3 cannot predict this test split: missing column(s) ['f9']"}
    gates = _by_name(model_gates(METRICS, GateParams(), champ))
    assert gates["champion_delta"].blocks and "missing column(s) ['f9']" in gates["champion_delta"].detail


def test_warn_and_skip_never_block_and_table_shows_decisions():
    gates = [Gate("drift", False, 0.7, 0.5, "warn"), Gate("fair", True, None, None, "skip", "no groups"), Gate("acc", False, 0.5, 0.9)]
    assert [g.name for g in blocked(gates)] == ["acc"]
    text = table(gates)
    assert "| drift | warn | 0.7 | 0.5 |" in text and "| fair | skipped |" in text and "| acc | FAIL |" in text


@pytest.mark.slow
def test_cache_benchmark_quick_runs_and_prints_its_table(tmp_path):
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "cache.py"), "--quick"], capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| mlp 32x1, batch 64 | cached |" in out.stdout and "fp16 top-5" in out.stdout


@pytest.mark.slow
def test_loss_cost_benchmark_quick_runs_and_prints_its_table():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "loss_cost.py"), "--quick"], capture_output=True, text=True, cwd=root,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 64 | kd+dist (cache) |" in out.stdout and "| 256 | kd+crd (online, K=16384) |" in out.stdout
