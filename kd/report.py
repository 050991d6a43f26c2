"""What a person reads: the summary of a pipeline run and the registry's state (`kd status`)."""

from __future__ import annotations

from kd import aliases
from kd.registry import Registry


def summary_markdown(runs: list[dict], metrics: dict, gate_table: str, model_name: str, note: str) -> str:
    stages = " | ".join(f"{r['stage']}: {'ran' if r['ran'] else 'skipped'} ({r['seconds']:.1f}s)" for r in runs)
    rows = ["| model | accuracy | ECE | params | bytes | p50 ms (batch 1) |", "|---|---|---|---|---|---|"]
    for name in ("teacher", "student", "scratch", "student_onnx_int8", "student_edge"):
        if name in metrics:
            m = metrics[name]
            rows.append(f"| {name} | {m['accuracy']:.4f} | {m['ece']:.4f} | {m['params']:,} | {m['size_bytes']:,} | {m['latency_ms_p50']:.3f} |")
    return "\n".join([
        "## kd retrain", "", f"Stages: {stages}", "", *rows, "", "### Gates", "", gate_table, "",
        f"**Registry ({model_name})**: {note}",
    ])


def status_markdown(reg: Registry) -> str:
    """Registered versions with their aliases, accuracy and gate outcome, then the champion history."""
    versions = reg.versions()
    if not versions:
        return f"no versions of {reg.name!r} registered at {reg.uri}"
    held: dict[str, list[str]] = {}
    for alias, v in reg.aliases().items():
        held.setdefault(v, []).append(alias)
    rows = [f"## {reg.name} at {reg.uri}", "", "| version | aliases | accuracy | gates | failed | publication |", "|---|---|---|---|---|---|"]
    for mv in versions:
        t = mv.tags
        rows.append(f"| {mv.version} | {','.join(sorted(held.get(str(mv.version), [])))} | {t.get('accuracy', '')} | "
                    f"{t.get('gates.passed', '')} | {t.get('gates.failed', '')} | {t.get('kd.publish', '')} |")
    events = aliases.history(reg)
    rows += ["", "### @champion history (newest last)", ""]
    if not events:
        rows.append("no promotion yet")
    for e in events:
        rows.append(f"- {e['at']} {e['action']}: v{e['from'] or '-'} -> v{e['to'] or '-'} by {e['by']} ({e['reason']})")
    rows.append(f"\nchampion stack (oldest first): {', '.join(aliases.stack(reg)) or '-'}")
    return "\n".join(rows)
