"""How fast one counterfactual (128x128 follow-up image + interpretation) is generated on CPU.

Measured in one run, lite preset shapes (trained weights with --model, else random weights,
which the output says):

* seconds per counterfactual at batch 1 through ``ProgEmuPipeline`` (VQ encode of the prior,
  KV-cached constrained sampling, VQ decode) and generated tokens/s;
* the naive baseline: the same constrained sampling without the KV cache (the whole sequence
  recomputed at every step), same prefix and same number of tokens; the ratio is printed;
* batch-16 throughput (16 counterfactuals in one left-padded batch) against batch 1, for the
  whole pipeline and for the token generation alone (the VQ encode/decode scales linearly);
* the prefill (the forward pass over the prior's image and the prompt) at batch 1 and 16, and
  its share of the batch's token generation: the part of the work batching cannot amortise;
* the same three figures again with ``pipe.compile()`` (decode steps through torch.compile;
  compiling happens in the warm-up calls and is reported separately); --no-compile skips it.

Targets: <= 2 s per counterfactual, >= 15x the naive path, batch-16 throughput >= 4x batch 1.
Random weights never choose EOS on their own, so the interpretation is capped at
--text-tokens (32 by default: a typical phantom interpretation) to keep runs comparable.

    .venv/bin/python benchmarks/generate_speed.py [--model CHECKPOINT] [--threads N]
        [--cache-window SLOTS] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from progemu_lite.model import generation  # noqa: E402
from progemu_lite.model.generation import SamplingSettings, generate  # noqa: E402
from progemu_lite.model.pipeline import ProgEmuPipeline, build_random  # noqa: E402

PROMPT = "The left pleural effusion becomes moderate. No pneumothorax."


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="trained lite checkpoint folder")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--text-tokens", type=int, default=32, help="interpretation cap (32)")
    parser.add_argument("--batch", type=int, default=16, help="batch size for throughput (16)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the fast paths (3)")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile measurements"
    )
    parser.add_argument(
        "--cache-window",
        type=int,
        default=generation.CACHE_WINDOW,
        help="attention reads the KV cache in steps of this many slots "
        f"({generation.CACHE_WINDOW}); a value above the sequence length reads all of it",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights and activations (float32); bfloat16 is only fast with AVX512-BF16 or AMX",
    )
    args = parser.parse_args()
    generation.CACHE_WINDOW = args.cache_window
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when piped
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model is not None and (args.model / "progemu.json").is_file():
        pipe = ProgEmuPipeline.from_pretrained(args.model, preset="lite")
        weights = f"trained weights from {args.model}"
    else:
        pipe = build_random("lite", seed=0)
        weights = "RANDOM weights (lite preset shapes; no trained checkpoint given)"
    pipe.to(dtype=getattr(torch, args.dtype))
    n_params = sum(p.numel() for n, p in pipe.model.named_parameters() if "vqmodel" not in n)
    print(
        f"model: {weights}; decoder {n_params / 1e6:.1f}M parameters, grid {pipe.grid}", flush=True
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {pipe.device}, "
        f"{args.dtype}",
        flush=True,
    )

    rng = np.random.default_rng(0)
    size = pipe.image_size
    priors = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(args.batch)]
    prompts = [PROMPT] * args.batch
    kwargs = dict(seed=0, max_text_tokens=args.text_tokens)

    # The naive baseline: same prefix, same constraint, same sampling, no KV cache.
    codes = pipe.encode_images(priors[0][None])[0]
    prefix = pipe.builder.prefix_ids(codes, PROMPT)
    settings = SamplingSettings(**kwargs)
    t_naive, naive = best_of(
        1,
        lambda: generate(
            pipe.model, [prefix], pipe.builder.ids, pipe.grid, settings, use_cache=False
        ),
    )
    print(f"naive (no KV cache, whole sequence recomputed every step): {t_naive:.1f} s")
    codes_all = pipe.encode_images(np.stack(priors))
    prefixes = [pipe.builder.prefix_ids(c, PROMPT) for c in codes_all]

    def measure(compiled: bool) -> dict:
        label = "compiled" if compiled else "eager"
        pipe.compile(compiled)
        start = time.perf_counter()
        pipe(priors[0], PROMPT, **kwargs)  # warm-up (allocations, lazy init, compiling)
        pipe.batch(priors, prompts, batch_size=args.batch, **kwargs)
        warm_up = time.perf_counter() - start
        print(f"[{label}] warm-up calls (batch 1 and {args.batch}): {warm_up:.1f} s")
        t1, one = best_of(args.repeats, lambda: pipe(priors[0], PROMPT, **kwargs))
        n_tokens = len(one.token_ids)
        print(
            f"[{label}] batch 1: {t1:.2f} s per counterfactual, {n_tokens} tokens, "
            f"{n_tokens / t1:.0f} tokens/s"
        )

        def tokens(rows, max_new_tokens=None):  # the token generation alone (no VQ)
            return generate(
                pipe.model,
                rows,
                pipe.builder.ids,
                pipe.grid,
                settings,
                compiled=compiled,
                max_new_tokens=max_new_tokens,
            )

        t_cached, cached = best_of(args.repeats, lambda: tokens([prefix]))
        same = torch.equal(cached.sequences, naive.sequences)
        print(
            f"[{label}] tokens only: KV cache {t_cached:.2f} s vs naive {t_naive:.1f} s: "
            f"{t_naive / t_cached:.1f}x (pipeline call vs naive: {t_naive / t1:.1f}x); "
            f"same tokens: {same}"
        )
        tb, many = best_of(
            max(1, args.repeats - 1),
            lambda: pipe.batch(priors, prompts, batch_size=args.batch, **kwargs),
        )
        throughput_b, throughput_1 = len(many) / tb, 1 / t1
        print(
            f"[{label}] batch {args.batch}: {tb:.2f} s for {len(many)} counterfactuals = "
            f"{throughput_b:.2f}/s vs {throughput_1:.2f}/s at batch 1: "
            f"{throughput_b / throughput_1:.1f}x"
        )
        # The same comparison for the token generation alone (no VQ encode/decode).
        tgb, _ = best_of(max(1, args.repeats - 1), lambda: tokens(prefixes))
        token_ratio = (len(prefixes) / tgb) / (1 / t_cached)
        print(
            f"[{label}] tokens only, batch {len(prefixes)}: {tgb:.2f} s = "
            f"{len(prefixes) / tgb:.2f}/s vs {1 / t_cached:.2f}/s at batch 1: {token_ratio:.1f}x"
        )
        # The prefill (prior image + prompt, about as many tokens as are generated) is one
        # big forward pass per row, compute-bound already at batch 1: batching cannot
        # amortise it, which caps the batch ratio however fast the decode steps get.
        t_pre1, _ = best_of(args.repeats, lambda: tokens([prefix], 1))
        t_preb, _ = best_of(max(1, args.repeats - 1), lambda: tokens(prefixes, 1))
        print(
            f"[{label}] prefill ({len(prefix)} tokens a row): batch 1 {t_pre1:.3f} s, "
            f"batch {len(prefixes)} {t_preb:.2f} s ({t_preb / len(prefixes) / t_pre1:.2f}x "
            f"batch 1's cost per row); {t_preb / tgb:.0%} of the batch's token generation"
        )
        return {
            "seconds_per_counterfactual": round(t1, 3),
            "tokens": n_tokens,
            "tokens_per_s": round(n_tokens / t1, 1),
            "speedup_vs_naive": round(t_naive / t_cached, 1),
            "pipeline_speedup_vs_naive": round(t_naive / t1, 1),
            f"batch{args.batch}_throughput_ratio": round(throughput_b / throughput_1, 2),
            f"batch{args.batch}_token_throughput_ratio": round(token_ratio, 2),
            "prefill_seconds_batch1": round(t_pre1, 3),
            f"prefill_seconds_batch{args.batch}": round(t_preb, 3),
            "same_tokens_as_naive": same,
            "warm_up_seconds": round(warm_up, 1),
        }

    results = {"eager": measure(compiled=False)}
    if not args.no_compile:
        results["compiled"] = measure(compiled=True)
    summary = {
        "weights": "random" if weights.startswith("RANDOM") else "trained",
        "threads": torch.get_num_threads(),
        "cache_window": generation.CACHE_WINDOW,
        "dtype": args.dtype,
        "naive_seconds": round(t_naive, 2),
        **results,
        "targets": {"seconds": 2.0, "speedup": 15, "batch_ratio": 4},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
