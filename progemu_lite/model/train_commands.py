"""``progemu-lite train``: train ProgEmu on an ICG-CXR-like folder (simulated or real).

Runs as is on a CPU or one GPU, and under ``accelerate launch`` on many (docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

from progemu_lite.model.codebook_init import VISUAL_TOKEN_INITS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train ProgEmu (next-token loss over prior image + prompt + follow-up + report)",
        description=(
            "Train a ProgEmu model on an ICG-CXR-like folder (simulated or real) with Hugging "
            "Face accelerate. Images are tokenised once by the frozen VQ (cached in OUT/cache); "
            "checkpoints, the loss curve and the final pipeline folder (OUT/pipeline) go to OUT. "
            "The same command runs on a CPU, one GPU, or under `accelerate launch` on many "
            "(docs/training.md)."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="ICG-CXR-like data folder")
    parser.add_argument(
        "--vq",
        type=Path,
        help="the VQ tokenizer: a train-vq output folder, its training_state checkpoint, or a "
        "pipeline folder",
    )
    parser.add_argument(
        "--init",
        type=Path,
        help=(
            "start from this pipeline folder (weights, tokenizer and VQ); with --vq as well, "
            "that VQ replaces the pipeline's (fine-tune the decoder on a retrained tokenizer)"
        ),
    )
    parser.add_argument(
        "--grow-layers",
        type=int,
        metavar="N",
        help="deepen the --init decoder to N layers first: copies of its layers whose output "
        "projections are zero, so training starts from the same predictions",
    )
    parser.add_argument(
        "--grown-layers-lr-scale",
        type=float,
        default=1.0,
        metavar="K",
        help="train the layers --grow-layers inserts at K times --lr (1): at a fine-tuning "
        "learning rate they stay nearly unused",
    )
    parser.add_argument(
        "--visual-token-init",
        choices=VISUAL_TOKEN_INITS,
        default="random",
        help="how a fresh decoder's visual-token embeddings start: random (transformers' init) "
        "or from the VQ codebook vectors, so that codes that look alike start alike (random)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--reuse-codes",
        type=Path,
        action="append",
        default=[],
        metavar="RUN",
        help="copy the image codes of identical images from an earlier run's finished cache "
        "(its folder or RUN/cache; same VQ) instead of encoding them again; repeatable",
    )
    parser.add_argument("--preset", default="lite", choices=("tiny", "lite", "full"), help="(lite)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=float, help="passes over the training split (30)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="pairs per device per micro-batch (8)"
    )
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (1)")
    parser.add_argument(
        "--lr", type=float, help="peak learning rate (tiny 1e-3, lite 5e-4, full 1e-5)"
    )
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps (3%% of the steps)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0)")
    parser.add_argument(
        "--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 = off (1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--eval-every", type=int, default=200, help="validate every N steps (200)")
    parser.add_argument(
        "--save-every", type=int, default=500, help="checkpoint every N steps (500)"
    )
    parser.add_argument(
        "--keep-checkpoints", type=int, default=2, help="checkpoints kept on disk (2)"
    )
    parser.add_argument(
        "--max-val-pairs", type=int, help="validate on the first N validation pairs only"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue OUT from its latest checkpoint"
    )
    parser.add_argument(
        "--until",
        type=int,
        metavar="STEP",
        help="stop at this step (checkpointed) and keep the --steps schedule; --resume goes on",
    )
    parser.add_argument(
        "--tokenizer", type=Path, help="use this saved text tokenizer instead of training one"
    )
    parser.add_argument(
        "--mixed-precision",
        default="auto",
        choices=("auto", "no", "bf16", "fp16"),
        help="auto: bf16 on CUDA, fp32 on CPU, or what `accelerate launch` was configured with; "
        "bf16 on a CPU with AVX512-BF16 or AMX trains about 1.3x faster",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (for the full model)",
    )
    parser.add_argument(
        "--interpretation-loss-weight",
        type=float,
        default=1.0,
        help="weight of the interpretation's tokens in the loss (1 = the official plain loss)",
    )
    parser.add_argument(
        "--reading-loss-weight",
        type=float,
        default=0.0,
        help="weight of an auxiliary loss: a linear probe on the decoder's state at the prior's "
        "<|image end|> names the prior's CheXpert findings (0 = off, the official loss)",
    )
    parser.add_argument(
        "--oversample-stable",
        action="append",
        default=[],
        metavar="FINDING=TIMES",
        help="a training pair whose prior holds FINDING unchanged (annotated stable, e.g. "
        "pneumothorax=3) appears TIMES times in each epoch's order; repeatable",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_train)

    export = subparsers.add_parser(
        "export",
        help="write a trained pipeline folder in half precision, ready to ship",
        description=(
            "Load a ProgEmu pipeline folder (e.g. OUT/pipeline of `progemu-lite train`) and save "
            "it to DST with its floating-point weights in float16 (default) or bfloat16: half "
            "the size. Loading it on a CPU computes in float32 again. DST is replaced atomically."
        ),
    )
    export.add_argument("source", type=Path, help="trained pipeline folder")
    export.add_argument("destination", type=Path, help="folder to write (replaced if a checkpoint)")
    export.add_argument(
        "--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="(float16)"
    )
    export.set_defaults(handler=_export)


def _train(args) -> int:
    from progemu_lite.model.train import TrainConfig, train

    config = TrainConfig(
        data=args.data,
        vq=args.vq,
        init=args.init,
        grow_layers=args.grow_layers,
        grown_layers_lr_scale=args.grown_layers_lr_scale,
        reuse_codes=tuple(args.reuse_codes),
        out=args.out,
        preset=args.preset,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        max_val_pairs=args.max_val_pairs,
        resume=args.resume,
        until=args.until,
        tokenizer=args.tokenizer,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        interpretation_loss_weight=args.interpretation_loss_weight,
        reading_loss_weight=args.reading_loss_weight,
        visual_token_init=args.visual_token_init,
        oversample_stable=dict(map(_finding_times, args.oversample_stable)),
        progress=not args.quiet,
    )
    result = train(config)
    if result.is_main_process:
        if result.pipeline_dir is not None:
            print(f"pipeline: {result.pipeline_dir}")
        print(f"loss curve: {result.loss_curve}")
    return 0


def _finding_times(text: str) -> tuple[str, int]:
    """``--oversample-stable``'s FINDING=TIMES (the factor's range is checked with the rest of
    the settings, in ``train``)."""
    finding, _, times = text.partition("=")
    if not finding or not times.isdigit():
        raise ValueError(
            f"--oversample-stable {text!r}: expected FINDING=TIMES with a whole number "
            "TIMES, e.g. pneumothorax=3"
        )
    return finding, int(times)


def _export(args) -> int:
    import torch

    from progemu_lite.model.pipeline import ProgEmuPipeline

    pipe = ProgEmuPipeline.from_pretrained(args.source, progress=False)
    pipe.to(dtype=getattr(torch, args.dtype))
    folder = pipe.save_pretrained(args.destination)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{folder}: {args.dtype} weights, {size / 2**20:.1f} MiB in all")
    return 0
