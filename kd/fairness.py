"""Group fairness of teacher and student with fairlearn's MetricFrame, and the bias-amplification gate.

Per-group metrics come from fairlearn (not Evidently: its GroupBy(Accuracy()) reports the overall
accuracy for every group). Multiclass tasks are assessed one-vs-rest per class and summarised by the
worst class. A rate that is undefined in a group (TPR without positives, FPR without negatives) is
left out of that class's difference instead of counting as 0, which fairlearn's rates would do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kd.config import FairnessParams
from kd.gates import Gate, at_most, skipped


def _labels(pred: np.ndarray) -> np.ndarray:
    """Class indices from labels (N,) or probabilities/logits (N, C)."""
    pred = np.asarray(pred)
    return pred.argmax(1) if pred.ndim == 2 else pred.astype(np.int64)


def _rng(values: dict[str, float]) -> float:
    v = [x for x in values.values() if not np.isnan(x)]
    return float(max(v) - min(v)) if len(v) >= 2 else 0.0


def _f(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def group_report(y_true, y_pred, groups: np.ndarray, classes: list[str], weights: np.ndarray | None = None) -> dict:
    """Per-group accuracy, selection rate, TPR, FPR and the DP / EO differences (fairlearn MetricFrame).

    demographic_parity_difference: max-min selection rate over groups; equalized_odds_difference:
    max of the TPR and FPR ranges over groups (Hardt et al. 2016; fairlearn 'between_groups',
    'worst_case'). Binary: positive class = classes[1]. Multiclass: one-vs-rest per class, the headline
    value is the max over classes (its class in "worst_class"), per-class values under "per_class".
    `weights`: how many rows each row stands for (fairlearn's sample weights; `triples` makes them).
    """
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    y_true, y_pred = _labels(y_true), _labels(y_pred)
    groups = np.asarray(groups).astype(str)
    if not (len(y_true) == len(y_pred) == len(groups)):
        raise ValueError(f"fairness: y_true {len(y_true)}, y_pred {len(y_pred)} and groups {len(groups)} differ in length")
    w = np.ones(len(y_true)) if weights is None else np.asarray(weights, np.float64)
    sw = {"sample_weight": w}
    acc = MetricFrame(
        metrics={"accuracy": accuracy_score, "n": lambda t, p, sample_weight: float(np.sum(sample_weight))}, y_true=y_true,
        y_pred=y_pred, sensitive_features=groups, sample_params={"accuracy": sw, "n": sw},
    )
    by_group = {str(g): {"n": int(r["n"]), "accuracy": float(r["accuracy"])} for g, r in acc.by_group.iterrows()}
    binary = len(classes) == 2
    positives = [1] if binary else list(range(len(classes)))
    per_class: dict[str, dict] = {}
    for c in positives:
        t, p = (y_true == c).astype(int), (y_pred == c).astype(int)
        mf = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "tpr": lambda a, b, sample_weight: true_positive_rate(a, b, pos_label=1, sample_weight=sample_weight),
                "fpr": lambda a, b, sample_weight: false_positive_rate(a, b, pos_label=1, sample_weight=sample_weight),
                "n_pos": lambda a, b, sample_weight: float(np.sum(sample_weight[a == 1])),
                "n_neg": lambda a, b, sample_weight: float(np.sum(sample_weight[a == 0])),
            },
            y_true=t,
            y_pred=p,
            sensitive_features=groups,
            sample_params={k: sw for k in ("selection_rate", "tpr", "fpr", "n_pos", "n_neg")},
        )
        rows = {}
        for g, r in mf.by_group.iterrows():
            rows[str(g)] = {
                "selection_rate": float(r["selection_rate"]),
                "tpr": float(r["tpr"]) if r["n_pos"] > 0 else float("nan"),
                "fpr": float(r["fpr"]) if r["n_neg"] > 0 else float("nan"),
            }
        dp = _rng({g: v["selection_rate"] for g, v in rows.items()})
        eo = max(_rng({g: v["tpr"] for g, v in rows.items()}), _rng({g: v["fpr"] for g, v in rows.items()}))
        per_class[classes[c]] = {
            "by_group": {g: {k: _f(v) for k, v in r.items()} for g, r in rows.items()},
            "demographic_parity_difference": dp,
            "equalized_odds_difference": eo,
        }
    out: dict = {
        "task": "binary" if binary else "multiclass",
        "positive_class": classes[1] if binary else None,
        "by_group": by_group,
        "accuracy_difference": _rng({g: v["accuracy"] for g, v in by_group.items()}),
        "per_class": per_class,
        "worst_class": {},
    }
    for metric in ("demographic_parity_difference", "equalized_odds_difference"):
        worst = max(per_class, key=lambda k: per_class[k][metric])
        out[metric] = float(per_class[worst][metric])
        out["worst_class"][metric] = worst
    if binary:  # the positive class's rates next to accuracy, for the common case
        for g, r in per_class[classes[1]]["by_group"].items():
            by_group[g].update(r)
    return out


def triples(y_true, pred, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (label, predicted class, group) triples of the rows and how many rows each stands for, read
    a batch at a time. Every rate here is a weighted mean, so the triples weighted by their counts give exactly
    the per-row results, in memory bounded by classes x classes x groups whatever the number of rows."""
    import pandas as pd

    from kd.data import row_batches

    total: pd.Series | None = None
    for (_, t), (_, pr), (_, g) in zip(row_batches(y_true), row_batches(pred), row_batches(groups)):
        c = pd.DataFrame({"y": _labels(t), "p": _labels(pr), "g": np.asarray(g).astype(str)}).value_counts()
        total = c if total is None else total.add(c, fill_value=0)
    if total is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, str), np.zeros(0)
    total = total.sort_index()
    idx = total.index
    return (idx.get_level_values("y").to_numpy(np.int64), idx.get_level_values("p").to_numpy(np.int64),
            idx.get_level_values("g").to_numpy().astype(str), total.to_numpy(np.float64))


def _plot(attr: str, reports: dict[str, dict], metric: str, p: FairnessParams, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(reports.values()))
    names = list(first["by_group"])
    x = np.arange(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [max(len(names), 2), 2]})
    width = 0.8 / len(reports)
    for k, (who, rep) in enumerate(reports.items()):
        a1.bar(x + (k - (len(reports) - 1) / 2) * width, [rep["by_group"][g]["accuracy"] for g in names], width, label=who)
    small = set(first.get("small_groups", {}))
    a1.set(xticks=x, xticklabels=[f"{g}\n(n={first['by_group'][g]['n']}{', not gated' if g in small else ''})" for g in names],
           ylabel="accuracy", ylim=(0, 1.05), title=f"accuracy by {attr}")
    a1.legend(loc="lower right", fontsize=8)
    values = [rep[metric] for rep in reports.values()]
    a2.bar(range(len(values)), values, 0.6, color=[f"C{k}" for k in range(len(values))])
    a2.axhline(p.max_disparity, color="k", ls="--", lw=1, label=f"max_disparity {p.max_disparity:g}")
    a2.set(xticks=range(len(values)), xticklabels=list(reports), ylim=(0, 1.05), title=metric.replace("_", " "))
    a2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fairness_checks(y_true, preds: dict[str, np.ndarray], groups: dict[str, np.ndarray], classes: list[str], p: FairnessParams,
                    out_dir: Path) -> tuple[dict, list[Gate]]:
    """Group fairness of each model in `preds` ("teacher", "student", "scratch": labels or probabilities)
    per sensitive attribute, a chart and three gates per attribute.

    Only groups with at least `p.min_group_size` test rows are gated (smaller ones are reported: their
    rates are noise). `fairness_<attr>`: student disparity (p.metric, fairlearn) <= p.max_disparity.
    `bias_amplification_<attr>`: student - teacher disparity <= p.max_amplification (Lukasik et al. 2021,
    "Teacher's pet: understanding and mitigating biases in distillation"). `bias_vs_scratch_<attr>`:
    student - scratch disparity <= p.max_amplification: distillation made the small model less fair than
    training it alone, as opposed to "small models are less fair". Charts at out_dir/fairness_<attr>.png.
    """
    if not groups:
        return {}, [skipped("fairness", "no sensitive attributes (set data.sensitive_columns)")]
    metric, results, gates = p.metric, {}, []
    for attr, groups_of_rows in groups.items():
        rows = {who: triples(y_true, pr, groups_of_rows) for who, pr in preds.items()}  # exact, bounded by classes and groups
        first = next(iter(rows.values()))
        names = np.unique(first[2])
        counts = np.array([first[3][first[2] == n].sum() for n in names], np.int64)
        small = {str(n): int(c) for n, c in zip(names, counts) if c < p.min_group_size}
        full = {who: group_report(t, pr, g, classes, w) for who, (t, pr, g, w) in rows.items()}
        big = {n for n in names if n not in small}
        gated = ({who: group_report(t[k], pr[k], g[k], classes, w[k]) for who, (t, pr, g, w) in rows.items()
                  for k in [np.isin(g, list(big))]} if len(big) >= 2 else None)
        reports = {who: (gated[who] if gated else full[who]) | {"by_group": full[who]["by_group"], "small_groups": small}
                   for who in preds}
        chart = _plot(attr, reports, metric, p, Path(out_dir) / f"fairness_{attr}.png")
        results[attr] = {"metric": metric, "min_group_size": p.min_group_size, "small_groups": small, "chart": chart.name,
                         **reports}
        if gated is None:
            why = f"fewer than 2 groups of {attr} have >= {p.min_group_size} test rows (checks.fairness.min_group_size); sizes {dict(zip(map(str, names), map(int, counts)))}"
            gates += [skipped(f"{kind}_{attr}", why) for kind in ("fairness", "bias_amplification", "bias_vs_scratch")]
            continue
        s = gated["student"][metric]
        note = f" (groups under {p.min_group_size} rows not gated: {sorted(small)})" if small else ""
        cls = f" (worst class {gated['student']['worst_class'][metric]})" if gated["student"]["task"] == "multiclass" else ""
        gates.append(at_most(f"fairness_{attr}", s, p.max_disparity, detail=f"student {metric} {s:.4f}{cls} <= {p.max_disparity:g}{note}"))
        for kind, ref in (("bias_amplification", "teacher"), ("bias_vs_scratch", "scratch")):
            if ref not in gated:
                gates.append(skipped(f"{kind}_{attr}", f"no {ref} predictions"))
                continue
            r = gated[ref][metric]
            cite = " (Lukasik et al. 2021)" if ref == "teacher" else ""
            results[attr][f"{kind}"] = s - r
            gates.append(at_most(f"{kind}_{attr}", s - r, p.max_amplification,
                                 detail=f"student {s:.4f} - {ref} {r:.4f} = {s - r:+.4f} <= {p.max_amplification:g}{cite}{note}"))
    return results, gates
