"""Gate decisions: one record per check, in the manner of TFX's model blessing (Evaluator thresholds).

Every check (absolute thresholds, retention against the teacher, change against the champion, and the
checks stage's drift/fairness/calibration results) becomes a `Gate`. A gate with action 'fail' that did
not pass blocks promotion; 'warn' is reported but does not block; 'skip' records why it was not run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from kd.config import GateParams

Action = Literal["fail", "warn", "skip"]


@dataclass
class Gate:
    name: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    action: Action = "fail"
    detail: str = ""

    @property
    def blocks(self) -> bool:
        return self.action == "fail" and not self.passed

    @property
    def decision(self) -> str:
        """pass | fail | warn | skipped"""
        if self.action == "skip":
            return "skipped"
        return "pass" if self.passed else ("fail" if self.action == "fail" else "warn")

    def to_dict(self) -> dict:
        return asdict(self)


def at_most(name: str, value: float, threshold: float, action: Action = "fail", detail: str = "") -> Gate:
    return Gate(name, bool(value <= threshold), float(value), float(threshold), action, detail or f"{value:.4g} <= {threshold:.4g}")


def at_least(name: str, value: float, threshold: float, action: Action = "fail", detail: str = "") -> Gate:
    return Gate(name, bool(value >= threshold), float(value), float(threshold), action, detail or f"{value:.4g} >= {threshold:.4g}")


def skipped(name: str, why: str) -> Gate:
    return Gate(name, True, None, None, "skip", why)


def model_gates(metrics: dict, g: GateParams, champion: dict | None) -> list[Gate]:
    """Absolute, retention and champion gates from `reports/metrics.json`-shaped metrics.

    `champion` is the current champion evaluated on *this* run's test split ({"version", "accuracy",
    "error"}), so both accuracies are measured on the same rows; None when there is no champion. The
    ECE bound lives with the calibration check (`checks.calibration.max_ece`), one place only.
    """
    s, t = metrics["student"], metrics["teacher"]
    gates = [
        at_least("accuracy", s["accuracy"], g.min_accuracy),
        at_most("latency_ms_p50", s["latency_ms_p50"], g.max_latency_ms),
        at_most("size_bytes", s["size_bytes"], g.max_size_bytes),
        at_least(
            "retention", s["accuracy"], g.min_retention * t["accuracy"],
            detail=f"student {s['accuracy']:.4f} >= {g.min_retention} x teacher {t['accuracy']:.4f}",
        ),
    ]
    if champion is None:
        gates.append(skipped("champion_delta", "no current champion"))
    elif champion["accuracy"] is None:
        gates.append(Gate("champion_delta", False, None, None, "fail", champion["error"] + "; compare by hand, then 'kd promote'"))
    else:
        c = champion["accuracy"]
        gates.append(at_least(
            "champion_delta", s["accuracy"], c - g.max_champion_drop,
            detail=f"student {s['accuracy']:.4f} >= champion v{champion['version']} {c:.4f} (on this test split) - {g.max_champion_drop}",
        ))
    return gates


def from_dicts(items: list[dict]) -> list[Gate]:
    return [Gate(**d) for d in items]


def blocked(gates: list[Gate]) -> list[Gate]:
    return [g for g in gates if g.blocks]


def table(gates: list[Gate]) -> str:
    """A markdown table of gate decisions (printed, stored as an artifact, shown in Prefect)."""
    rows = ["| gate | decision | value | threshold | detail |", "|---|---|---|---|---|"]
    for g in gates:
        decision = "FAIL" if g.decision == "fail" else g.decision
        v = "" if g.value is None else f"{g.value:.4g}"
        t = "" if g.threshold is None else f"{g.threshold:.4g}"
        rows.append(f"| {g.name} | {decision} | {v} | {t} | {g.detail} |")
    return "\n".join(rows)
