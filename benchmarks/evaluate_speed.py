"""How long the evaluator takes to SCORE cases (generation excluded), against a baseline measured
in the same run: text-only scoring (BLEU/METEOR/ROUGE-L + finding scores) of the same cases.

    .venv/bin/python benchmarks/evaluate_speed.py [--data DIR] [--classifier DIR] [--cases 500]

Without --data a simulated dataset (128 px) is generated in a temporary folder; without
--classifier a quickly trained one is used (its quality does not matter for speed).
Target (issue): scoring 500 cases in at most 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progemu_lite.evaluation import baselines as B  # noqa: E402
from progemu_lite.evaluation.classifier import AlignmentClassifier  # noqa: E402
from progemu_lite.evaluation.commands import train_from_dataset  # noqa: E402
from progemu_lite.evaluation.report import (  # noqa: E402
    changed_regions,
    evaluate,
    load_cases,
    text_scores,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--classifier", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            from progemu_lite.phantom.dataset import PhantomConfig, generate

            data = tmp / "data"
            patients = -(-args.cases // 3) + 20
            print(f"generating {patients * 3} simulated pairs (128 px) ...", flush=True)
            generate(data, PhantomConfig(patients, 3, 128, 0), workers=2, progress=False)
        if args.classifier is None:
            classifier = train_from_dataset(
                data, tmp / "clf", epochs=1, max_pairs=200, progress=False
            )
        else:
            classifier = AlignmentClassifier.load(args.classifier)

        case_set = load_cases(data, "all", limit=args.cases, progress=False)
        n = len(case_set.cases)
        print(f"{n} cases from {data}")
        cache = tmp / "cache"

        start = time.perf_counter()
        changed_regions(case_set, cache, progress=False)
        masks_s = time.perf_counter() - start
        print(f"changed regions (once per dataset, then cached): {masks_s:.1f} s")

        # Baseline: text-only scoring of one system's interpretations (includes METEOR's JVM).
        from progemu_lite.evaluation.finding_scores import score_corpus

        texts = [c.prompt for c in case_set.cases]
        start = time.perf_counter()
        text_scores(texts, case_set.cases, n_boot=args.n_boot, seed=0, include_meteor=True)
        score_corpus(texts, [c.annotation for c in case_set.cases])
        text_s = time.perf_counter() - start
        print(f"baseline, text-only scoring of 1 system: {text_s:.1f} s")

        for systems in ([B.CopyPrior()], [B.CopyPrior(), B.TrueFollowup()]):
            result = evaluate(
                case_set, systems, classifier, cache_dir=cache, n_boot=args.n_boot, progress=False
            )
            seconds = result["scoring_seconds"]
            names = ", ".join(s.name for s in systems)
            print(
                f"full scoring of {n} cases x {len(systems)} system(s) ({names}): {seconds:.1f} s "
                f"= {seconds / text_s:.2f}x text-only; {seconds / len(systems):.1f} s per system "
                f"(target for 500 cases: <= 120 s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
