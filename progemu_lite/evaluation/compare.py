"""``progemu-lite compare``: two evaluation reports over the same cases, compared case by case.

Two checkpoints scored on the same cases differ less than their separate confidence intervals
suggest: most cases are easy or hard for both. A paired bootstrap resamples the cases once for
both runs, so the interval is that of the difference itself. It reads each report's
``cases.csv`` (written by ``progemu-lite evaluate``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .report import CASE_COLUMNS, CASES_FILE

PAIRED_METRICS = ("stable_reported", "prompt_named", "finding_f1")
_LABELS = {
    "stable_reported": "stable findings reported",
    "prompt_named": "prompted change stated",
    "finding_f1": "finding F1",
}


def read_cases(report: str | Path, system: str | None = None) -> tuple[str, dict[str, dict]]:
    """``(system, {pair_id: row})`` from a report folder's ``cases.csv``; ``system`` defaults
    to the report's only model row (``model:...``)."""
    path = Path(report) / CASES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: give a folder written by `progemu-lite evaluate` (this version)"
        )
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    systems = list(dict.fromkeys(line["system"] for line in lines))
    if system is None:
        models = [s for s in systems if s.startswith("model:")]
        if len(models) != 1:
            raise ValueError(
                f"{path}: name the system to compare (--system-a/--system-b); "
                f"it has {', '.join(systems) or 'none'}"
            )
        system = models[0]
    elif system not in systems:
        raise ValueError(f"{path} has no system {system!r}; it has {', '.join(systems)}")
    return system, {line["pair_id"]: line for line in lines if line["system"] == system}


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    def numbers(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])

    return {key: numbers(key) for key in CASE_COLUMNS if key != "pair_id"}


def _statistic(metric: str, columns: dict[str, np.ndarray], idx: np.ndarray) -> float:
    if metric == "stable_reported":
        annotated = columns["stable_annotated"][idx].sum()
        return columns["stable_reported"][idx].sum() / annotated if annotated else np.nan
    if metric == "prompt_named":
        judged = columns["prompt_named"][idx]
        judged = judged[np.isfinite(judged)]
        return judged.mean() if len(judged) else np.nan
    tp, fp, fn = (columns[k][idx].sum() for k in ("finding_tp", "finding_fp", "finding_fn"))
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def paired_comparison(
    a: dict[str, dict], b: dict[str, dict], *, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Each of :data:`PAIRED_METRICS` for run ``a``, run ``b`` and ``b - a`` with a 95% paired
    bootstrap interval over the cases both scored (``{pair_id: row}`` from :func:`read_cases`)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two reports have no case in common: were they run on one split?")
    if n_boot < 1:
        raise ValueError(f"--n-boot must be at least 1, got {n_boot}")
    col_a, col_b = _columns([a[p] for p in shared]), _columns([b[p] for p in shared])
    everything = np.arange(len(shared))
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, len(shared), len(shared)) for _ in range(n_boot)]
    result = {
        "n_cases": len(shared),
        "only_a": len(set(a) - set(b)),
        "only_b": len(set(b) - set(a)),
    }
    for metric in PAIRED_METRICS:
        diffs = np.array(
            [_statistic(metric, col_b, i) - _statistic(metric, col_a, i) for i in resamples]
        )
        diffs = diffs[np.isfinite(diffs)]
        value_a = _statistic(metric, col_a, everything)
        value_b = _statistic(metric, col_b, everything)
        result[metric] = {
            "a": float(value_a),
            "b": float(value_b),
            "difference": float(value_b - value_a),
            "ci": (
                (float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975)))
                if len(diffs)
                else (float("nan"), float("nan"))
            ),
        }
    return result


def comparison_text(name_a: str, name_b: str, result: dict) -> str:
    """The comparison as printed by ``progemu-lite compare``."""
    lines = [
        f"A = {name_a}, B = {name_b}: {result['n_cases']} cases scored by both "
        f"(only in A: {result['only_a']}, only in B: {result['only_b']})"
    ]
    for metric in PAIRED_METRICS:
        entry = result[metric]
        lo, hi = entry["ci"]
        lines.append(
            f"{_LABELS[metric]}: A {entry['a']:.3f}, B {entry['b']:.3f}, "
            f"B - A {entry['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired 95% interval)"
        )
    return "\n".join(lines)
