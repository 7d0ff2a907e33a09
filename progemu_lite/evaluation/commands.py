"""``progemu-lite train-classifier`` and ``progemu-lite evaluate``."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from .baselines import READABLE_FOLLOWUPS

BASELINES = ("copy-prior", "nearest-neighbour", "vq-reconstruction", "true-follow-up")
DEFAULT_TRAIN_PAIRS = 1500
DEFAULT_EPOCHS = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-classifier",
        help="train the progression-alignment classifier on a simulated dataset",
        description=(
            "Train the small CNN that reads each finding's presence and severity (used for the "
            "AUROC/F1 alignment scores and the Fréchet distance) on the train split of a "
            "simulated dataset; saves classifier.safetensors + classifier.json."
        ),
    )
    train.add_argument("--data", type=Path, required=True, help="simulated dataset folder")
    train.add_argument("--out", type=Path, required=True, help="folder for the classifier")
    train.add_argument("--size", type=int, default=None, help="input size (default: the data's)")
    train.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs (6)")
    train.add_argument(
        "--max-pairs",
        type=int,
        default=DEFAULT_TRAIN_PAIRS,
        help=f"train on at most this many pairs ({DEFAULT_TRAIN_PAIRS}; 2 images each)",
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (0)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=run_train_classifier)

    ev = subparsers.add_parser(
        "evaluate",
        help="score the model and baselines on a dataset split (Markdown/CSV/JSON/PNG report)",
        description=(
            "Score the model (when --checkpoint resolves to weights) and the baselines on the "
            "same cases: Fréchet distance in classifier features, progression-alignment AUROC "
            "and F1, BLEU-3, METEOR, ROUGE-L, finding F1, hallucination rate, SSIM/PSNR/MAE, "
            "with bootstrap 95% confidence intervals. Generations are cached per checkpoint "
            "and seed."
        ),
    )
    ev.add_argument("--data", type=Path, required=True, help="dataset folder (ICG-CXR layout)")
    ev.add_argument("--split", default="test", help="split to score: train/val/test/all (test)")
    ev.add_argument(
        "--checkpoint",
        default="lite",
        help="model weights: a registered name or a checkpoint folder (lite); 'none' skips it",
    )
    ev.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated baselines, or 'none' (default: {','.join(BASELINES)})",
    )
    ev.add_argument("--vq", type=Path, default=None, help="VQ checkpoint for vq-reconstruction")
    ev.add_argument("--classifier", type=Path, default=None, help="alignment classifier folder")
    ev.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder")
    ev.add_argument("--cache-dir", type=Path, default=None, help="generation cache folder")
    ev.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed (0)")
    ev.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="model sampling temperature (the pipeline's default 1.0; 0 = greedy)",
    )
    ev.add_argument(
        "--text-temperature",
        type=float,
        default=None,
        help="model temperature of the interpretation only (default: --temperature)",
    )
    ev.add_argument(
        "--top-k", type=int, default=None, help="model top-k sampling (the pipeline's 2048)"
    )
    ev.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="model classifier-free guidance scale (the pipeline's 1.0 = none)",
    )
    ev.add_argument(
        "--text-guidance-scale",
        type=float,
        default=None,
        help="model guidance scale of the interpretation only (default: --guidance-scale; "
        "1 guides the image only)",
    )
    ev.add_argument(
        "--read-follow-up",
        choices=READABLE_FOLLOWUPS,
        default=None,
        help="the model writes its interpretation of a GIVEN follow-up instead of drawing its "
        "own: each case's true follow-up, or its unchanged prior (a text that still states the "
        "prompted change is echoing the prompt); the image columns score that image's VQ "
        "round trip",
    )
    ev.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (200)")
    ev.add_argument("--max-cases", type=int, default=None, help="score at most N cases")
    ev.add_argument("--examples", type=int, default=4, help="example cases in the PNG (4)")
    ev.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(handler=run_evaluate)

    compare = subparsers.add_parser(
        "compare",
        help="compare two evaluation reports of the same cases, case by case",
        description=(
            "Compare two `progemu-lite evaluate` reports of the same cases (e.g. two "
            "checkpoints): stable findings reported, prompted change stated and finding F1 of "
            "each, and their difference with a paired bootstrap 95% interval (the cases "
            "resampled once for both runs), from each report's cases.csv."
        ),
    )
    compare.add_argument("report_a", type=Path, help="report folder A (the baseline)")
    compare.add_argument("report_b", type=Path, help="report folder B")
    compare.add_argument("--system-a", help="system of A to compare (default: its only model row)")
    compare.add_argument("--system-b", help="system of B to compare (default: its only model row)")
    compare.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (2000)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    compare.set_defaults(handler=run_compare)


def dataset_key(root: Path) -> str:
    """Identity of a dataset for the default classifier location: its path and manifest."""
    manifest = root / "manifest.json"
    text = str(root.resolve()) + (manifest.read_text() if manifest.is_file() else "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_from_dataset(
    root: Path,
    out: Path,
    *,
    size: int | None = None,
    epochs: int = DEFAULT_EPOCHS,
    max_pairs: int = DEFAULT_TRAIN_PAIRS,
    seed: int = 0,
    progress: bool = True,
):
    """Train on ``root``'s train split, check on its val split, save into ``out``."""
    from .classifier import presence_auroc, train_classifier, training_set
    from .report import load_cases

    if max_pairs < 1:
        raise ValueError(f"--max-pairs must be at least 1, got {max_pairs}")
    train = load_cases(root, "train", limit=max_pairs, progress=progress)
    if not train.cases:
        raise ValueError(f"{root} has no train split pairs to train the classifier on")
    images, labels = training_set(train.cases)
    size = size or int(images.shape[1])
    start = time.perf_counter()
    clf = train_classifier(
        images,
        labels,
        size=size,
        epochs=epochs,
        seed=seed,
        progress=progress,
        extra_info={"data": str(root.resolve()), "train_pairs": len(train.cases)},
    )
    clf.info["train_seconds"] = round(time.perf_counter() - start, 1)
    val = load_cases(root, "val", limit=300, progress=False)
    annotated = [c for c in val.cases if c.annotation]
    if annotated:
        val_images, val_labels = training_set(annotated)
        clf.info["val_presence_auroc"] = presence_auroc(clf.predict(val_images), val_labels)
        clf.info["val_severity_accuracy"] = float(
            (clf.predict(val_images).argmax(-1) == val_labels).mean()
        )
        clf.info["val_majority_accuracy"] = float((val_labels == 0).mean())
    clf.save(out)
    return clf


def run_train_classifier(args: argparse.Namespace) -> int:
    clf = train_from_dataset(
        args.data,
        args.out,
        size=args.size,
        epochs=args.epochs,
        max_pairs=args.max_pairs,
        seed=args.seed,
        progress=not args.quiet,
    )
    info = clf.info
    print(
        f"classifier saved to {args.out} ({info['train_images']} images, {info['train_seconds']} s)"
    )
    if "val_presence_auroc" in info:
        print(
            f"val: presence AUROC {info['val_presence_auroc']:.3f}, severity accuracy "
            f"{info['val_severity_accuracy']:.3f} (all-absent guess {info['val_majority_accuracy']:.3f})"
        )
    return 0


def _parse_baselines(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(
            f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}"
        )
    return list(dict.fromkeys(names))


def run_compare(args: argparse.Namespace) -> int:
    from .compare import comparison_text, paired_comparison, read_cases

    name_a, cases_a = read_cases(args.report_a, args.system_a)
    name_b, cases_b = read_cases(args.report_b, args.system_b)
    result = paired_comparison(cases_a, cases_b, n_boot=args.n_boot, seed=args.seed)
    print(comparison_text(name_a, name_b, result))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..paths import progemu_home
    from . import baselines as B
    from .classifier import AlignmentClassifier
    from .report import evaluate, load_cases, markdown_table

    progress = not args.quiet
    names = _parse_baselines(args.baselines)
    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be at least 1, got {args.n_boot}")
    if args.max_cases is not None and args.max_cases < 1:
        raise ValueError(f"--max-cases must be at least 1, got {args.max_cases}")
    case_set = load_cases(args.data, args.split, limit=args.max_cases, progress=progress)
    if not case_set.cases:
        raise ValueError(f"no pairs of split {args.split!r} under {args.data}")
    notes: list[str] = []

    if args.classifier is not None:
        classifier = AlignmentClassifier.load(args.classifier)
    else:
        folder = progemu_home() / "classifiers" / dataset_key(args.data)
        try:
            classifier = AlignmentClassifier.load(folder)
        except FileNotFoundError:
            print(
                f"no alignment classifier for this dataset yet: training one into {folder}",
                file=sys.stderr,
            )
            classifier = train_from_dataset(args.data, folder, progress=progress)
        notes.append(f"Alignment classifier: {folder}")

    systems = []
    if args.checkpoint.lower() != "none":
        sampling = {
            key: value
            for key, value in (
                ("temperature", args.temperature),
                ("text_temperature", args.text_temperature),
                ("top_k", args.top_k),
                ("guidance_scale", args.guidance_scale),
                ("text_guidance_scale", args.text_guidance_scale),
            )
            if value is not None
        }
        if args.read_follow_up and {"guidance_scale", "text_guidance_scale"} & sampling.keys():
            raise ValueError(
                "--guidance-scale and --text-guidance-scale apply to drawing, not to "
                "--read-follow-up"
            )
        model, reason = B.load_model_system(
            args.checkpoint, seed=args.seed, reads=args.read_follow_up, **sampling
        )
        if model is None:
            message = f"model row skipped: {reason}; evaluating the baselines only"
            print(message, file=sys.stderr)
            notes.append(message)
        else:
            model.progress = progress
            systems.append(model)
    for name in names:
        if name == "copy-prior":
            systems.append(B.CopyPrior())
        elif name == "true-follow-up":
            systems.append(B.TrueFollowup())
        elif name == "nearest-neighbour":
            train = load_cases(args.data, "train", progress=progress)
            if train.cases:
                systems.append(B.NearestNeighbour(train.cases))
            else:
                notes.append("nearest-neighbour skipped: the dataset has no train split")
        elif name == "vq-reconstruction":
            if args.vq is None:
                notes.append("vq-reconstruction skipped: no VQ checkpoint given (--vq)")
            else:
                systems.append(B.VQReconstruction(args.vq))
    if not systems:
        raise ValueError("nothing to evaluate: no model weights and no baselines selected")

    cache_dir = args.cache_dir or progemu_home() / "evaluation-cache"
    result = evaluate(
        case_set,
        systems,
        classifier,
        out=args.out,
        cache_dir=cache_dir,
        n_boot=args.n_boot,
        seed=args.seed,
        examples=args.examples,
        include_meteor=not args.no_meteor,
        notes=notes,
        progress=progress,
    )
    print(markdown_table(result["rows"]))
    scoring = result["scoring_seconds"]
    print(
        f"scoring {result['n_cases']} cases x {len(result['rows'])} systems took {scoring:.1f} s "
        "(generation excluded)"
    )
    for note in notes:
        print(f"note: {note}")
    print(f"report written to {args.out}")
    return 0
