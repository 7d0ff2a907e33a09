"""The evaluation report: every system (model and baselines) scored on the same cases by the same
code, with bootstrap 95% confidence intervals, written as Markdown, CSV, JSON and a PNG of
example cases.

Columns (``COLUMNS``): the paper's Fréchet distance, AUROC, F1 (progression alignment, see
:mod:`progemu_lite.evaluation.classifier`), BLEU-3, METEOR, ROUGE-L (against the reference
interpretation: ICG-CXR ``changes-of-findings``), plus finding F1 and hallucination rate
(:mod:`progemu_lite.evaluation.finding_scores`) and SSIM against the true follow-up. The JSON
and CSV add PSNR, MAE, the same three inside the changed region, the change ratio (mean
|image - prior| inside the changed region over outside it), alignment accuracy and counts.

Confidence intervals: percentile bootstrap over cases (``n_boot`` resamples, seeded). Statistics
that are means over cases (SSIM, PSNR, MAE, ROUGE-L), ratios of sums (finding F1, hallucination
rate), AUROC/F1 (each case carries its positive and negatives) and corpus BLEU-3 (recomputed from
each case's n-gram counts exactly as pycocoevalcap aggregates them) are recomputed on each
resample. Two are approximated, because recomputing them per resample is too slow: METEOR (the
METEOR jar's corpus aggregate) takes the spread of the resampled mean of per-case METEOR around
its full-sample mean, shifted onto the corpus value; the Fréchet distance uses at most
``FD_BOOT`` resamples of the generated features (the reference set is kept fixed).

The Fréchet distance compares each row's generated images with the cases' TRUE follow-ups in
the feature space of our classifier: so the true-follow-up row is 0 by construction. It is not
the paper's Inception-based gFID.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import atomic_write, atomic_write_text
from .baselines import Case, Output

# (key, header, higher is better)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("frechet_distance", "Fréchet distance (ours)", False),
    ("auroc", "AUROC", True),
    ("f1", "F1", True),
    ("bleu_3", "BLEU-3", True),
    ("meteor", "METEOR", True),
    ("rouge_l", "ROUGE-L", True),
    ("finding_f1", "Finding F1", True),
    ("hallucination_rate", "Hallucination rate", False),
    ("ssim", "SSIM", True),
)
# The model issue's own quality checks, a second Markdown table: the prompted change stated in
# the interpretation, the image changed where the finding is (change ratio), and the prior's
# unchanged findings reported.
QUALITY_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("prompt_named", "Prompted change stated", True),
    ("change_ratio", "Change ratio (inside/outside)", True),
    ("stable_reported", "Stable findings reported", True),
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "psnr",
    "mae",
    "ssim_changed",
    "psnr_changed",
    "mae_changed",
    "change_ratio",
    "alignment_accuracy",
    "omission_rate",
    "prompt_named",
    "stable_reported",
)
COUNT_COLUMNS: tuple[str, ...] = (
    "n_cases",
    "alignment_cases",
    "empty_text",
    "no_findings_text",
    "prompt_cases",
    "stable_findings",
    "unscorable_annotation",
    "malformed_entries",
)
FD_BOOT = 200
# Okabe-Ito colours (safe for the common colour-vision deficiencies), with a symbol each so
# colour is never the only cue.
MARKS = {
    "correct": ("#0072B2", "+"),  # blue
    "hallucinated": ("#D55E00", "!"),  # vermillion
    "omitted": ("#E69F00", "?"),  # orange
    "plain": ("#000000", " "),
}
# Characters of a column title in the example figure: about what fits over a 2.6-inch image at
# 9 points.
EXAMPLE_TITLE_WIDTH = 30


# ----------------------------------------------------------------------------------------------
# Loading cases


@dataclass
class CaseSet:
    cases: list[Case]
    root: Path
    split: str | None
    counts: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        text = json.dumps([str(self.root.resolve()), self.split, [c.pair_id for c in self.cases]])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_cases(
    root, split: str | None, *, limit: int | None = None, progress: bool = True
) -> CaseSet:
    """Every pair of ``split`` below ``root`` (None/"all": every split) as :class:`Case`.

    A pair whose annotation is malformed is kept with ``annotation=None`` and a problem noted;
    a pair whose JSON or images cannot be read at all is skipped and counted."""
    from tqdm.auto import tqdm

    from ..data.icgcxr import PairRecord, load_pair_images, read_pair

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset folder at {root}")
    split = None if split in (None, "all") else split
    folders = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if f"{Path(dirpath).name}.json" in filenames:
            folders.append(Path(dirpath))
    counts = {"unreadable_pairs": 0, "malformed_annotation": 0, "missing_annotation": 0}
    cases: list[Case] = []
    for folder in tqdm(folders, desc=f"loading {split or 'all'} pairs", disable=not progress):
        problems = []
        try:
            record = read_pair(folder)
        except ValueError as err:
            # Keep the pair if only its annotation is bad: drop the annotation, note why.
            try:
                data = json.loads((folder / f"{folder.name}.json").read_text(encoding="utf-8"))
                data.pop("expert-annotation")
                record = PairRecord.from_json(data, folder, folder.name, folder)
            except (ValueError, KeyError, AttributeError, TypeError, OSError):
                counts["unreadable_pairs"] += 1
                continue
            problems.append(f"malformed annotation: {err}")
        if split is not None and record.split != split:
            continue
        try:
            prior, followup = load_pair_images(record)
        except (OSError, ValueError):
            counts["unreadable_pairs"] += 1
            continue
        if prior.shape != followup.shape or prior.ndim != 2:
            counts["unreadable_pairs"] += 1
            continue
        if problems:
            counts["malformed_annotation"] += 1
        elif record.annotation is None:
            counts["missing_annotation"] += 1
        progression = record.extra.get("requested-progression")
        cases.append(
            Case(
                pair_id=record.pair_id,
                prior=prior,
                prompt=record.prompt,
                followup=followup,
                reference=record.interpretation,
                annotation=None
                if record.annotation is None
                else [e.to_dict() for e in record.annotation],
                progression=progression if isinstance(progression, dict) else None,
                problems=problems,
            )
        )
        if limit is not None and len(cases) >= limit:
            break
    counts["cases"] = len(cases)
    return CaseSet(cases, root, split, counts)


def changed_regions(case_set: CaseSet, cache_dir: Path | None, progress: bool = True):
    """Changed-region masks of every case (cached per case set) and how each was got."""
    from tqdm.auto import tqdm

    from ..data.icgcxr import PairRecord
    from ..phantom.progression import AnnotationEntry
    from .image_metrics import changed_region

    path = cache_dir / f"masks-{case_set.key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            return list(data["masks"]), [str(m) for m in data["methods"]]
    masks, methods = [], []
    for case in tqdm(case_set.cases, desc="changed regions", disable=not progress):
        annotation = None
        if case.annotation is not None:
            annotation = [AnnotationEntry.from_dict(e) for e in case.annotation]
        record = PairRecord(case.pair_id, case_set.root, case.prompt, "", annotation=annotation)
        mask, method = changed_region(case_set.root, record, case.prior, case.followup)
        masks.append(mask)
        methods.append(method)
    if path is not None:
        _atomic_save_npz(path, masks=np.stack(masks), methods=np.array(methods))
    return masks, methods


# ----------------------------------------------------------------------------------------------
# Generation with a cache


def _atomic_save_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda temp: np.savez_compressed(temp, **arrays), suffix=".npz")


def run_system(
    system, case_set: CaseSet, cache_dir: Path | None, batch_size: int = 32
) -> tuple[list[Output], bool]:
    """The system's outputs on every case, from the cache when it has them; ``(outputs, cached)``."""
    key = getattr(system, "cache_key", None)
    path = cache_dir / f"gen-{key}-{case_set.key}.npz" if key and cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            texts = json.loads(str(data["texts"]))
            return [Output(img, t) for img, t in zip(data["images"], texts, strict=True)], True
    outputs: list[Output] = []
    cases = case_set.cases
    for start in range(0, len(cases), batch_size):
        outputs += system.generate(cases[start : start + batch_size])
    if path is not None and outputs:
        _atomic_save_npz(
            path,
            images=np.stack([o.image for o in outputs]),
            texts=np.array(json.dumps([o.text for o in outputs])),
        )
    return outputs, False


# ----------------------------------------------------------------------------------------------
# Scoring


def bleu_stats(candidates: list[str], references: list[str], n: int = 3) -> np.ndarray:
    """Per case ``[testlen, reflen, guess_1..n, correct_1..n]``, pycocoevalcap's BLEU counts."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    from .text_metrics import normalize_text

    rows = []
    for cand, ref in zip(candidates, references, strict=True):
        comps = cook_test(normalize_text(cand or ""), cook_refs([normalize_text(ref)], n=4), n=4)
        rows.append(
            [comps["testlen"], comps["reflen"][0], *comps["guess"][:n], *comps["correct"][:n]]
        )
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2 + 2 * n)


def corpus_bleu_from_stats(stats: np.ndarray, n: int = 3) -> float:
    """Corpus BLEU-n from summed per-case counts (pycocoevalcap's formula)."""
    tiny, small = 1e-15, 1e-9
    total = stats.sum(axis=0)
    testlen, reflen = total[0], total[1]
    guess, correct = total[2 : 2 + n], total[2 + n : 2 + 2 * n]
    bleu = float(np.prod((correct + tiny) / (guess + small)) ** (1.0 / n))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        bleu *= math.exp(1 - 1 / ratio)
    return bleu


def bootstrap_ci(statistic, n: int, n_boot: int, seed: int = 0, alpha: float = 0.05):
    """Percentile ``(lo, hi)`` of ``statistic(indices)`` over ``n_boot`` resamples of ``n`` cases
    (NaN values dropped; ``(nan, nan)`` when none is finite)."""
    if n == 0 or n_boot < 1:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return (float("nan"), float("nan"))
    return (float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2)))


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def text_scores(
    texts: list[str], cases: list[Case], *, n_boot: int, seed: int, include_meteor: bool
) -> dict:
    """BLEU-3, METEOR and ROUGE-L (with CIs) of ``texts`` against the cases' reference
    interpretations, over the cases that have one."""
    from .text_metrics import corpus_text_metrics

    results: dict = {}
    with_ref = [i for i, c in enumerate(cases) if c.reference.strip()]
    if with_ref:
        cand = [texts[i] or "" for i in with_ref]
        refs = [cases[i].reference for i in with_ref]
        metrics = corpus_text_metrics(cand, refs, include_meteor=include_meteor, per_case=True)
        stats = bleu_stats(cand, refs)
        m = len(with_ref)
        results["bleu_3"] = {
            "value": metrics["bleu_3"],
            "ci": bootstrap_ci(lambda idx: corpus_bleu_from_stats(stats[idx]), m, n_boot, seed),
        }
        rouge = np.asarray(metrics["per_case"]["rouge_l"])
        results["rouge_l"] = {
            "value": metrics["rouge_l"],
            "ci": bootstrap_ci(lambda idx: float(rouge[idx].mean()), m, n_boot, seed),
        }
        if include_meteor:
            met = np.asarray(metrics["per_case"]["meteor"])
            lo, hi = bootstrap_ci(lambda idx: float(met[idx].mean()), m, n_boot, seed)
            shift = metrics["meteor"] - float(met.mean())
            results["meteor"] = {"value": metrics["meteor"], "ci": (lo + shift, hi + shift)}
    for name in ("bleu_3", "rouge_l", "meteor"):
        results.setdefault(name, {"value": float("nan"), "ci": (float("nan"), float("nan"))})
    return results


def score_system(
    outputs: list[Output],
    case_set: CaseSet,
    masks: list[np.ndarray],
    classifier,
    reference_features: np.ndarray | None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    include_meteor: bool = True,
    text_results: dict | None = None,
) -> dict:
    """Every metric of one system, with CIs: ``{metric: {"value", "ci"}, "counts": {...}}``.
    ``text_results``: :func:`text_scores` of the outputs when already computed."""
    from .classifier import alignment_pairs, auroc, expected_head_state, f1_at
    from .finding_scores import (
        MISSED_STABLE_KINDS,
        missed_stable_findings,
        prompted_change_reported,
        score_case,
        stable_findings_by_severity,
        stable_findings_reported,
        summarize,
    )
    from .image_metrics import change_ratio, frechet_distance, mae, psnr, ssim

    cases = case_set.cases
    n = len(cases)
    per_case: dict[str, np.ndarray] = {}
    images = [o.image for o in outputs]
    for name, fn in (("ssim", ssim), ("psnr", psnr), ("mae", mae)):
        per_case[name] = np.array([fn(c.followup, im) for c, im in zip(cases, images, strict=True)])
        per_case[f"{name}_changed"] = np.array(
            [fn(c.followup, im, m) for c, im, m in zip(cases, images, masks, strict=True)]
        )
    per_case["change_ratio"] = np.array(
        [change_ratio(im, c.prior, m) for c, im, m in zip(cases, images, masks, strict=True)]
    )
    results: dict = {}
    for name, values in per_case.items():
        results[name] = {
            "value": _nanmean(values),
            "ci": bootstrap_ci(lambda idx, v=values: _nanmean(v[idx]), n, n_boot, seed),
        }

    # Progression alignment
    expected = [
        expected_head_state(c.progression, c.annotation) if c.progression else None for c in cases
    ]
    probs = classifier.predict(images)
    scores, labels, _ = alignment_pairs(probs, expected)
    known = [i for i, e in enumerate(expected) if e is not None]
    width = len(scores) // len(known) if known else 1
    s2, l2 = scores.reshape(len(known), width), labels.reshape(len(known), width)
    correct = np.array(
        [int(np.argmax(probs[i, e[0]]) == e[1]) for i, e in ((i, expected[i]) for i in known)],
        dtype=float,
    )
    for name, fn in (
        ("auroc", lambda s, lab: auroc(s.ravel(), lab.ravel())),
        ("f1", lambda s, lab: f1_at(s.ravel(), lab.ravel())),
    ):
        results[name] = {
            "value": fn(s2, l2) if len(known) else float("nan"),
            "ci": bootstrap_ci(lambda idx, fn=fn: fn(s2[idx], l2[idx]), len(known), n_boot, seed),
        }
    results["alignment_accuracy"] = {
        "value": _nanmean(correct),
        "ci": bootstrap_ci(lambda idx: _nanmean(correct[idx]), len(known), n_boot, seed),
    }

    # Fréchet distance against the true follow-ups' features
    if reference_features is not None and n >= 2:
        feats = classifier.features(images)
        # Paired resampling: the same cases from the generated and the reference set, so the
        # bias that duplicated samples give a Fréchet distance hits both alike.
        rng = np.random.default_rng(seed)
        boot = []
        for _ in range(min(n_boot, FD_BOOT)):
            idx = rng.integers(0, n, n)
            boot.append(frechet_distance(feats[idx], reference_features[idx]))
        fd = frechet_distance(feats, reference_features)
        # Resampling with replacement inflates a Fréchet distance (duplicates shrink the
        # covariance): shift the percentile interval by that bias (median resample - estimate).
        bias = float(np.median(boot)) - fd
        ci = (float(np.quantile(boot, 0.025)) - bias, float(np.quantile(boot, 0.975)) - bias)
        ci = (max(ci[0], 0.0), max(ci[1], 0.0))
        results["frechet_distance"] = {"value": fd, "ci": ci}
    else:
        results["frechet_distance"] = {"value": float("nan"), "ci": (float("nan"), float("nan"))}

    texts = [o.text for o in outputs]
    if text_results is None:
        text_results = text_scores(
            texts, cases, n_boot=n_boot, seed=seed, include_meteor=include_meteor
        )
    results.update(text_results)

    # Finding-level scores of the interpretation
    case_scores = [score_case(t, c.annotation) for t, c in zip(texts, cases, strict=True)]
    summary = summarize(case_scores)
    scored = [i for i, r in enumerate(case_scores) if r.status == "scored"]
    tp = np.array([case_scores[i].tp for i in scored], float)
    fp = np.array([case_scores[i].fp for i in scored], float)
    fn_ = np.array([case_scores[i].fn for i in scored], float)
    claims = np.array([len(case_scores[i].claims) for i in scored], float)

    def micro_f1(idx):
        t, f, m = tp[idx].sum(), fp[idx].sum(), fn_[idx].sum()
        return 1.0 if t + f + m == 0 else 2 * t / (2 * t + f + m)

    def rate(num, den):
        return lambda idx: float(num[idx].sum() / den[idx].sum()) if den[idx].sum() else 0.0

    k = len(scored)
    results["finding_f1"] = {
        "value": summary["micro"]["f1"],
        "ci": bootstrap_ci(micro_f1, k, n_boot, seed),
    }
    results["hallucination_rate"] = {
        "value": summary["hallucination_rate"],
        "ci": bootstrap_ci(rate(fp, claims), k, n_boot, seed),
    }
    results["omission_rate"] = {
        "value": summary["omission_rate"],
        "ci": bootstrap_ci(rate(fn_, tp + fn_), k, n_boot, seed),
    }
    # The two quality checks of the model issue: the prompted change stated, the prior's
    # unchanged findings reported (an echo of the prompt gets 0 on the second).
    named_by_case = [
        prompted_change_reported(r, c.progression) for r, c in zip(case_scores, cases, strict=True)
    ]
    named = np.array([float(v) for v in named_by_case if v is not None])
    results["prompt_named"] = {
        "value": _nanmean(named),
        "ci": bootstrap_ci(lambda idx: _nanmean(named[idx]), len(named), n_boot, seed),
    }
    stable = np.array([stable_findings_reported(case_scores[i]) for i in scored], float)
    stable = stable.reshape(-1, 2)
    results["stable_reported"] = {
        "value": stable[:, 0].sum() / stable[:, 1].sum() if stable[:, 1].sum() else float("nan"),
        "ci": bootstrap_ci(
            lambda idx: (
                stable[idx, 0].sum() / stable[idx, 1].sum() if stable[idx, 1].sum() else np.nan
            ),
            len(stable),
            n_boot,
            seed,
        ),
    }
    by_severity: dict[tuple[str, str], list[int]] = {}
    for i in scored:
        for key, (reported, annotated) in stable_findings_by_severity(case_scores[i]).items():
            totals = by_severity.setdefault(key, [0, 0])
            totals[0] += reported
            totals[1] += annotated
    by_finding: dict[str, list[int]] = {}
    for (finding, _), (reported, annotated) in by_severity.items():
        totals = by_finding.setdefault(finding, [0, 0])
        totals[0] += reported
        totals[1] += annotated
    results["stable_by_finding"] = {
        finding: {"reported": r, "annotated": a} for finding, (r, a) in sorted(by_finding.items())
    }
    results["stable_by_severity"] = {}
    for (finding, severity), (r, a) in sorted(by_severity.items()):
        results["stable_by_severity"].setdefault(finding, {})[severity] = {
            "reported": r,
            "annotated": a,
        }
    missed = {kind: 0 for kind in MISSED_STABLE_KINDS}
    missed_by_finding: dict[str, dict[str, int]] = {}
    for i in scored:
        for finding, how in missed_stable_findings(case_scores[i]):
            missed[how] += 1
            kinds = missed_by_finding.setdefault(finding, dict.fromkeys(MISSED_STABLE_KINDS, 0))
            kinds[how] += 1
    results["stable_missed"] = missed
    results["stable_missed_by_finding"] = dict(sorted(missed_by_finding.items()))
    # One row per case (cases.csv): what a paired comparison of two runs on the same cases needs.
    results["_per_case"] = []
    for case, score, named_one in zip(cases, case_scores, named_by_case, strict=True):
        reported, annotated = stable_findings_reported(score)
        results["_per_case"].append(
            {
                "pair_id": case.pair_id,
                "prompt_named": named_one,
                "stable_reported": reported,
                "stable_annotated": annotated,
                "finding_tp": score.tp,
                "finding_fp": score.fp,
                "finding_fn": score.fn,
            }
        )
    results["counts"] = {
        "n_cases": n,
        "alignment_cases": len(known),
        "empty_text": sum(not (t or "").strip() for t in texts),
        "no_findings_text": summary["no_findings_text"],
        "prompt_cases": len(named),
        "stable_findings": int(stable[:, 1].sum()),
        "unscorable_annotation": summary["unscorable"],
        "malformed_entries": summary["malformed_entries"],
    }
    results["_case_scores"] = case_scores  # for the example figure; dropped from the JSON
    return results


# ----------------------------------------------------------------------------------------------
# Writing


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _cell(entry: dict) -> str:
    lo, hi = entry["ci"]
    if not math.isfinite(entry["value"]):
        return "n/a"
    ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return _fmt(entry["value"]) + ci


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return _json_safe(value.item())
    return value


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    headers = ["System"] + [h for _, h, _ in columns]
    arrows = ["", *("↑" if up else "↓" for _, _, up in columns)]
    lines = [
        "| " + " | ".join(f"{h} {a}".strip() for h, a in zip(headers, arrows, strict=True)) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in rows:
        cells = [row["system"]] + [_cell(row["metrics"][k]) for k, _, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stable_missed_table(rows: list[dict]) -> str:
    """Markdown: per system, how the prior's unchanged findings it did not report were missed
    (:func:`finding_scores.missed_stable_findings`)."""
    from .finding_scores import MISSED_STABLE_KINDS

    lines = [
        "| System | " + " | ".join(MISSED_STABLE_KINDS) + " |",
        "|" + "---|" * (len(MISSED_STABLE_KINDS) + 1),
    ]
    for row in rows:
        missed = row["metrics"].get("stable_missed", {})
        total = sum(missed.values())
        cells = [
            f"{missed.get(kind, 0)} ({missed.get(kind, 0) / total:.0%})" if total else "0"
            for kind in MISSED_STABLE_KINDS
        ]
        lines.append(f"| {row['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stable_by_severity_table(rows: list[dict]) -> str:
    """Markdown: per system and finding type, the stable findings reported per annotated
    severity (reported/annotated), mildest first."""
    from ..phantom.findings import FINDINGS

    lines = ["| System | Finding | Reported, by severity |", "|---|---|---|"]
    for row in rows:
        for finding, sizes in row["metrics"].get("stable_by_severity", {}).items():
            known = FINDINGS[finding].severity_words if finding in FINDINGS else ()
            order = [s for s in known if s in sizes] + sorted(set(sizes) - set(known))
            cells = [f"{s} {sizes[s]['reported']}/{sizes[s]['annotated']}" for s in order]
            lines.append(f"| {row['system']} | {finding.replace('_', ' ')} | {', '.join(cells)} |")
    return "\n".join(lines)


def stable_by_finding_table(rows: list[dict]) -> str:
    """Markdown: per system and finding type, the share of the prior's unchanged findings that
    the interpretation reports (reported/annotated)."""
    findings = sorted({f for row in rows for f in row["metrics"].get("stable_by_finding", {})})
    if not findings:
        return "No stable findings annotated."
    lines = [
        "| System | " + " | ".join(f.replace("_", " ") for f in findings) + " |",
        "|" + "---|" * (len(findings) + 1),
    ]
    for row in rows:
        counts = row["metrics"].get("stable_by_finding", {})
        cells = []
        for f in findings:
            entry = counts.get(f)
            if not entry or not entry["annotated"]:
                cells.append("n/a")
            else:
                share = entry["reported"] / entry["annotated"]
                cells.append(f"{share:.0%} ({entry['reported']}/{entry['annotated']})")
        lines.append(f"| {row['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CASES_FILE = "cases.csv"
CASE_COLUMNS = (
    "pair_id",
    "prompt_named",
    "stable_reported",
    "stable_annotated",
    "finding_tp",
    "finding_fp",
    "finding_fn",
)


def cases_csv_text(rows: list[dict]) -> str:
    """``cases.csv``: one line per system and case (``prompt_named`` 1, 0, or empty where it
    cannot be judged), for per-case analyses and ``progemu-lite compare``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("system", *CASE_COLUMNS))
    for row in rows:
        for case in row["metrics"].get("_per_case", []):
            named = case["prompt_named"]
            cells = [case[c] for c in CASE_COLUMNS]
            cells[1] = "" if named is None else int(named)
            writer.writerow((row["system"], *cells))
    return buffer.getvalue()


def csv_text(rows: list[dict]) -> str:
    keys = [k for k, _, _ in COLUMNS] + list(EXTRA_COLUMNS)
    header = ["system"]
    for k in keys:
        header += [k, f"{k}_ci_low", f"{k}_ci_high"]
    header += list(COUNT_COLUMNS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        line = [row["system"]]
        for k in keys:
            entry = row["metrics"].get(k, {"value": float("nan"), "ci": (float("nan"),) * 2})
            line += [_fmt(entry["value"], 6), _fmt(entry["ci"][0], 6), _fmt(entry["ci"][1], 6)]
        line += [row["metrics"]["counts"][c] for c in COUNT_COLUMNS]
        writer.writerow(line)
    return buffer.getvalue()


def _marked_lines(text: str, case_score, width: int) -> list[tuple[str, str]]:
    """(line, mark) pairs: each sentence of the text marked by its claims, then the omissions."""
    from ..phantom.findings import FINDINGS, location_text
    from .labeler import split_sentences

    # Generated text may hold control characters no font can draw.
    text = "".join(ch if ch.isprintable() else "?" for ch in (text or ""))

    if case_score is None or case_score.status != "scored":
        return [(line, "plain") for line in textwrap.wrap(text or "(no text)", width)]
    good = {c.sentence for _, c in case_score.matched}
    bad = {c.sentence for c in case_score.hallucinated}
    out = []
    sentences = split_sentences(text) if (text or "").strip() else ["(empty text)"]
    for sentence in sentences:
        mark = "hallucinated" if sentence in bad else "correct" if sentence in good else "plain"
        color_symbol = MARKS[mark][1]
        for i, line in enumerate(textwrap.wrap(sentence, width - 2) or [""]):
            out.append(((color_symbol if i == 0 else " ") + " " + line, mark))
    for entry in case_score.omitted:
        what = " ".join(
            w for w in (location_text(entry.location), FINDINGS[entry.finding].text) if w
        )
        for i, line in enumerate(textwrap.wrap(f"omitted: {what} {entry.direction}", width - 2)):
            out.append(((MARKS["omitted"][1] if i == 0 else " ") + " " + line, "omitted"))
    return out


def column_title(system: str, width: int = EXAMPLE_TITLE_WIDTH) -> str:
    """A system's name wrapped to its image's width (a checkpoint path would run into the
    neighbouring columns' titles)."""
    return textwrap.fill(system, width, break_long_words=True, break_on_hyphens=False)


def example_figure(path: Path, case_set: CaseSet, rows: list[dict], outputs: dict, picks) -> None:
    """PNG: per example case the prior, the true follow-up and every system's image, each with
    its interpretation marked (+ correct, ! hallucinated, ? omitted; Okabe-Ito colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    columns = ["prior", "true follow-up"] + [r["system"] for r in rows]
    titles = [column_title(column) for column in columns]
    n_rows, n_cols = len(picks), len(columns)
    height = 5.2 * n_rows
    fig = plt.figure(figsize=(2.6 * n_cols, height))
    # the first row's titles need about 0.2 in plus 0.15 in a line; matplotlib's default top
    # margin (12% of the figure) left a band of white inches between the legend and a tall
    # figure's images
    title_lines = max(title.count("\n") + 1 for title in titles)
    top = 1.0 - (0.2 + 0.15 * title_lines) / height
    grid = fig.add_gridspec(
        2 * n_rows, n_cols, height_ratios=[1.0, 1.0] * n_rows, hspace=0.05, top=top
    )
    for r, case_index in enumerate(picks):
        case = case_set.cases[case_index]
        for c, column in enumerate(columns):
            ax = fig.add_subplot(grid[2 * r, c])
            if column == "prior":
                image, lines = (
                    case.prior,
                    [(line, "plain") for line in textwrap.wrap("Prompt: " + case.prompt, 34)],
                )
            elif column == "true follow-up":
                image = case.followup
                lines = [(line, "plain") for line in textwrap.wrap(case.reference, 34)]
            else:
                row = rows[c - 2]
                out = outputs[row["system"]][case_index]
                image = out.image
                lines = _marked_lines(out.text, row["metrics"]["_case_scores"][case_index], 34)
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[c] if r == 0 else "", fontsize=9)
            if c == 0:
                ax.set_ylabel(case.pair_id, fontsize=8)
            text_ax = fig.add_subplot(grid[2 * r + 1, c])
            text_ax.axis("off")
            for i, (line, mark) in enumerate(lines[:18]):
                text_ax.text(
                    0.0,
                    1.0 - i * 0.055,
                    line,
                    fontsize=6.5,
                    family="monospace",
                    color=MARKS[mark][0],
                    va="top",
                    transform=text_ax.transAxes,
                )
    legend = [
        Patch(color=MARKS[m][0], label=f"{MARKS[m][1]} {m}")
        for m in ("correct", "hallucinated", "omitted")
    ]
    fig.legend(
        handles=legend,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=3,
        fontsize=8,
        frameon=False,
    )

    def save(temp: Path) -> None:
        with warnings.catch_warnings():
            # a generated text in another script may lack glyphs: drawn as boxes, not an error
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            fig.savefig(temp, dpi=110, bbox_inches="tight")

    try:
        atomic_write(path, save, suffix=".png")
    finally:
        plt.close(fig)


def pick_examples(case_set: CaseSet, count: int, seed: int = 0) -> list[int]:
    """Up to ``count`` cases with different prompted findings where possible."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(case_set.cases))
    seen, picks = set(), []
    for i in order:
        p = case_set.cases[i].progression or {}
        key = p.get("finding")
        if key not in seen:
            seen.add(key)
            picks.append(int(i))
        if len(picks) == count:
            return sorted(picks)
    for i in order:
        if len(picks) == count:
            break
        if int(i) not in picks:
            picks.append(int(i))
    return sorted(picks)


def write_report(out: Path, result: dict, case_set: CaseSet, outputs: dict, examples: int) -> dict:
    """Write ``report.md``, ``report.csv``, ``report.json``, ``cases.csv`` and ``examples.png``
    into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    paths = {
        "markdown": out / "report.md",
        "csv": out / "report.csv",
        "json": out / "report.json",
        "cases": out / CASES_FILE,
        "png": out / "examples.png",
    }
    notes = "\n".join(f"- {note}" for note in result["notes"])
    md = (
        f"# ProgEmu-Lite evaluation: {result['dataset']} (split {result['split']})\n\n"
        f"{result['n_cases']} cases; 95% bootstrap confidence intervals in brackets "
        f"({result['n_boot']} resamples over cases).\n\n"
        f"{markdown_table(rows)}\n\n"
        "## Quality checks\n\n"
        "Prompted change stated: share of cases whose interpretation states the requested "
        "finding at its side with the requested direction. Change ratio: mean |image - prior| "
        "inside the changed region over outside it. Stable findings reported: share of the "
        "prior's unchanged findings (annotated `stable`) that the interpretation reports.\n\n"
        f"{markdown_table(rows, QUALITY_COLUMNS)}\n\n"
        "Stable findings reported, by finding type (which findings are read off the prior, "
        "and which are missed):\n\n"
        f"{stable_by_finding_table(rows)}\n\n"
        "The same by the finding's annotated severity:\n\n"
        f"{stable_by_severity_table(rows)}\n\n"
        'How the unreported ones were missed: not mentioned at all, denied ("No '
        'pneumothorax.") or misstated (that finding claimed at another place or with another '
        "direction):\n\n"
        f"{stable_missed_table(rows)}\n\n"
        "## Notes\n\n"
        f"{notes}\n"
    )
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["csv"], csv_text(rows))
    atomic_write_text(paths["json"], json.dumps(_json_safe(result), indent=2) + "\n")
    atomic_write_text(paths["cases"], cases_csv_text(rows))
    picks = pick_examples(case_set, min(examples, len(case_set.cases)))
    if picks:
        example_figure(paths["png"], case_set, rows, outputs, picks)
    return {k: str(v) for k, v in paths.items()}


# ----------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate(
    case_set: CaseSet,
    systems: list,
    classifier,
    *,
    out: Path | None = None,
    cache_dir: Path | None = None,
    n_boot: int = 200,
    seed: int = 0,
    examples: int = 4,
    include_meteor: bool = True,
    notes: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Generate (or load cached) outputs of every system, score them, and write the report."""
    from tqdm.auto import tqdm

    if not case_set.cases:
        raise ValueError(
            f"no cases to evaluate in {case_set.root} (split {case_set.split or 'all'})"
        )
    notes = list(notes or [])
    masks, methods = changed_regions(case_set, cache_dir, progress=progress)
    reference_features = classifier.features([c.followup for c in case_set.cases])
    rows, outputs, timings = [], {}, {}
    bar = tqdm(systems, desc="generating", unit="system", disable=not progress)
    for system in bar:
        bar.set_postfix(system=system.name)
        start = time.perf_counter()
        outputs[system.name], cached = run_system(system, case_set, cache_dir)
        timings[system.name] = {"generation_s": time.perf_counter() - start, "cached": cached}

    # METEOR talks to one JVM per corpus, line by line: run the systems' text metrics in
    # threads (the JVMs work in parallel) while the image metrics run here.
    start = time.perf_counter()
    # Many small matrix operations (bootstrap, Fréchet distance): multithreaded BLAS only adds
    # synchronisation cost there, and collapses when the cores are busy.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=2) as pool:
        text_jobs = {
            system.name: pool.submit(
                text_scores,
                [o.text for o in outputs[system.name]],
                case_set.cases,
                n_boot=n_boot,
                seed=seed,
                include_meteor=include_meteor,
            )
            for system in systems
        }
        for system in tqdm(systems, desc="scoring", unit="system", disable=not progress):
            metrics = score_system(
                outputs[system.name],
                case_set,
                masks,
                classifier,
                reference_features,
                n_boot=n_boot,
                seed=seed,
                text_results=text_jobs[system.name].result(),
            )
            rows.append(
                {
                    "system": system.name,
                    "description": getattr(system, "description", ""),
                    "metrics": metrics,
                    "timing": timings[system.name],
                }
            )
    scoring_seconds = time.perf_counter() - start
    method_counts = {m: methods.count(m) for m in sorted(set(methods))}
    notes += [
        "Fréchet distance: between each row's images and the true follow-ups in the feature "
        "space of our alignment classifier (trained on simulated images); NOT the paper's "
        "Inception-based gFID. The true-follow-up row is 0 by construction.",
        "AUROC/F1 (progression alignment): for each case the classifier's probability that the "
        "prompted finding's side group has the expected severity (positive) against the same "
        "image scored for each other severity (negatives); F1 at probability 0.5.",
        f"Changed region: {method_counts} (renderer = union of the renderer's regions of the "
        "changed findings re-derived from the simulation seed; difference = |follow-up - prior| "
        "> 12 grey levels after a blur, dilated).",
        "METEOR CI: spread of the mean per-case METEOR, shifted onto the corpus value; "
        f"Fréchet CI: {min(n_boot, FD_BOOT)} paired resamples of the generated and reference "
        "sets, percentile interval shifted by the resampling bias.",
        f"Loaded {case_set.counts.get('cases', 0)} cases; malformed annotations "
        f"{case_set.counts.get('malformed_annotation', 0)}, missing annotations "
        f"{case_set.counts.get('missing_annotation', 0)}, unreadable pairs skipped "
        f"{case_set.counts.get('unreadable_pairs', 0)}.",
    ]
    result = {
        "dataset": str(case_set.root),
        "split": case_set.split or "all",
        "n_cases": len(case_set.cases),
        "n_boot": n_boot,
        "seed": seed,
        "columns": [k for k, _, _ in COLUMNS],
        "classifier": {k: v for k, v in classifier.info.items() if k != "heads"},
        "rows": rows,
        "scoring_seconds": scoring_seconds,
        "dataset_counts": case_set.counts,
        "changed_region_methods": method_counts,
        "notes": notes,
    }
    if out is not None:
        result["files"] = write_report(Path(out), result, case_set, outputs, examples)
    return result
