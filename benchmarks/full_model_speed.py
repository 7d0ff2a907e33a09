"""Decode speed of the full-size ProgEmu (Emu3-Gen 8B shapes) against the memory-bandwidth bound.

On a CUDA GPU this builds the ``full`` preset with random weights directly on the device in bf16
(no download), then measures, through the library's own constrained decoding loop
(``progemu_lite.model.generation.generate``: static KV cache, top-k 2048 sampling):

* the prefill of a realistic prefix (BOS + 64x64 prior image + prompt + follow-up header);
* decode ms/token at batch 1 and batch 8, as the difference between a run of 1 and of
  1 + ``--decode-steps`` new tokens after that prefix (so prefill and setup cancel out);
* time per counterfactual = prefill + (4160 image tokens + EOF/EOI + ``--text-tokens``) x ms/token
  (extrapolated from the measured steps; the attention over a growing cache makes late steps
  a little slower, so this is a slight underestimate);
* the bound: bytes of the weights read per decode step (every LM weight except the embedding
  table, of which one row is read) / memory bandwidth. The bandwidth comes from ``--hbm-gbps``,
  else a table by GPU name (H200 4.8 TB/s, H100 SXM 3.35 TB/s, ...), else a measured
  device-to-device copy. Target: batch-1 decode within 1.5x of the bound.

Without a GPU (or with ``--preset tiny``) it runs the TINY shapes on the CPU and says so: those
figures only show that the script works; the bound then uses a measured memcpy bandwidth (and a
model that small sits in the CPU caches, so the ratio mostly measures Python overhead).

    .venv/bin/python benchmarks/full_model_speed.py [--decode-steps 64] [--hbm-gbps 4800]

About 1-3 minutes on an H200 (building 8.8B random parameters dominates); seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from progemu_lite.model.config import build_config  # noqa: E402
from progemu_lite.model.generation import SamplingSettings, generate  # noqa: E402
from progemu_lite.model.pipeline import (  # noqa: E402
    attention_implementation,
    check_resources,
    estimate_resources,
)
from progemu_lite.tokenization.sequence import SequenceBuilder  # noqa: E402
from progemu_lite.tokenization.text import train_text_tokenizer, vocabulary_corpus  # noqa: E402
from progemu_lite.tokenization.vq import IMAGE_SIZES, SPATIAL_FACTOR, vq_config  # noqa: E402

PROMPT = "The left pleural effusion becomes moderate. No pneumothorax."
TINY_NOTICE = (
    "NOTICE: no CUDA GPU in use: running the TINY shapes on the CPU. These figures only show "
    "that the benchmark runs; they say nothing about the 8B model (run it on a GPU for that)."
)

# Peak HBM bandwidth in GB/s by (lower-case) substring of torch.cuda.get_device_name().
# More specific names first.
HBM_GBPS = (
    ("gh200", 4000.0),  # before "h200", which its name contains
    ("h200", 4800.0),
    ("h100 nvl", 3900.0),
    ("h100 pcie", 2000.0),
    ("h100", 3350.0),  # SXM
    ("a100-sxm4-80gb", 2039.0),
    ("a100 80gb", 2039.0),
    ("a100-pcie-80gb", 1935.0),
    ("a100", 1555.0),  # 40 GB
    ("l40s", 864.0),
    ("a10g", 600.0),
    ("l4", 300.0),
    ("rtx 4090", 1008.0),
    ("rtx 3090", 936.0),
    ("v100", 900.0),
    ("t4", 320.0),
)


def table_bandwidth(name: str) -> float | None:
    lowered = name.lower()
    for key, gbps in HBM_GBPS:
        if key in lowered:
            return gbps
    return None


def measured_copy_bandwidth(device: torch.device, megabytes: int = 512, repeats: int = 5) -> float:
    """GB/s of a device-local copy, counting read + write traffic (2 x size / time)."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy warms up (page faults, clocks)
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.3f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.3f} MB"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(preset: str, device: torch.device, dtype: torch.dtype, attention: str):
    """Random-weight ``Emu3ForConditionalGeneration`` of ``preset`` built directly on
    ``device`` in ``dtype`` (no float32 copy of 8B parameters anywhere), and its tokenizer."""
    from transformers import Emu3ForConditionalGeneration

    tokenizer = train_text_tokenizer(vocabulary_corpus(), vq_config(preset).codebook_size)
    config = build_config(preset, tokenizer)
    config.text_config._attn_implementation = attention
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = Emu3ForConditionalGeneration(config)
    return model.eval(), tokenizer


def read_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: the text model and lm_head, minus the embedding
    table (a lookup reads one row)."""
    lm = model.model.text_model
    n = sum(p.numel() * p.element_size() for p in lm.parameters())
    n += sum(p.numel() * p.element_size() for p in model.lm_head.parameters())
    embed = lm.embed_tokens.weight
    return n - embed.numel() * embed.element_size()


def timed_generate(model, prefixes, builder, grid, steps: int, device) -> float:
    settings = SamplingSettings(temperature=1.0, top_k=2048, seed=0)  # the official decoding
    sync(device)
    start = time.perf_counter()
    generate(model, prefixes, builder.ids, grid, settings, max_new_tokens=steps)
    sync(device)
    return time.perf_counter() - start


def measure(model, builder, grid, batch: int, decode_steps: int, repeats: int, device):
    """(prefill seconds, decode seconds per step) at ``batch``, best of ``repeats``."""
    rng = np.random.default_rng(batch)
    codebook = builder.ids.codebook_size
    prefixes = [
        builder.prefix_ids(rng.integers(0, codebook, grid), PROMPT, grid) for _ in range(batch)
    ]
    timed_generate(model, prefixes, builder, grid, 2, device)  # warm-up: kernels, allocator
    one = min(timed_generate(model, prefixes, builder, grid, 1, device) for _ in range(repeats))
    many = min(
        timed_generate(model, prefixes, builder, grid, 1 + decode_steps, device)
        for _ in range(repeats)
    )
    return one, max(many - one, 1e-9) / decode_steps, len(prefixes[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=("auto", "full", "tiny"),
        default="auto",
        help="auto: full shapes on CUDA, tiny shapes on the CPU (auto)",
    )
    parser.add_argument("--decode-steps", type=int, default=64, help="timed decode steps (64)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N (2)")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (1,8)")
    parser.add_argument(
        "--text-tokens", type=int, default=195, help="interpretation length assumed (195, the cap)"
    )
    parser.add_argument("--hbm-gbps", type=float, default=None, help="memory bandwidth, GB/s")
    parser.add_argument(
        "--force", action="store_true", help="run the full shapes even on a CPU (hours)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU torch threads")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    cuda = torch.cuda.is_available()
    preset = args.preset if args.preset != "auto" else ("full" if cuda else "tiny")
    # The tiny shapes always run on the CPU: they are the no-GPU smoke run.
    device = torch.device("cuda" if cuda and preset == "full" else "cpu")
    if preset == "tiny":
        print(TINY_NOTICE)
    if preset == "full" and device.type == "cpu":
        print("NOTICE: full shapes on the CPU (--force): expect hours")
        config = build_config(
            "full", train_text_tokenizer(vocabulary_corpus(), vq_config("full").codebook_size)
        )
        check_resources(
            estimate_resources(config, "full", device="cpu", dtype=torch.float32), force=args.force
        )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attention = attention_implementation() if device.type == "cuda" else "sdpa"
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"

    start = time.perf_counter()
    model, tokenizer = build(preset, device, dtype, attention)
    sync(device)
    built = time.perf_counter() - start
    builder = SequenceBuilder(tokenizer)
    side = IMAGE_SIZES[preset] // SPATIAL_FACTOR
    grid = (side, side)
    new_tokens = side * (side + 1) + 2 + args.text_tokens + 1  # grid, EOF, EOI, text, EOS
    n_params = sum(p.numel() for p in model.parameters())
    step_bytes = read_bytes_per_step(model)

    if args.hbm_gbps:
        gbps, source = args.hbm_gbps, "--hbm-gbps"
    elif device.type == "cuda" and table_bandwidth(gpu_name):
        gbps, source = table_bandwidth(gpu_name), f"spec sheet ({gpu_name})"
    else:
        gbps = measured_copy_bandwidth(device)
        source = f"measured {'device-to-device' if device.type == 'cuda' else 'memcpy'} copy"
    bound_ms = step_bytes / (gbps * 1e9) * 1e3

    print(f"preset {preset} on {gpu_name}: {n_params / 1e9:.3f}B parameters, {dtype}, {attention}")
    print(
        f"built with random weights in {built:.1f} s; footprint {size(model.get_memory_footprint())}"
    )
    print(
        f"bound: {size(step_bytes)} read per decode step / {gbps:.0f} GB/s ({source}) "
        f"= {bound_ms:.3f} ms/token"
    )
    print(
        f"counterfactual: {new_tokens} new tokens ({side}x{side} grid + EOLs, EOF, EOI, "
        f"{args.text_tokens} text, EOS)"
    )
    rows = []
    for batch in batches:
        prefill, per_step, prefix_len = measure(
            model, builder, grid, batch, args.decode_steps, args.repeats, device
        )
        ms = per_step * 1e3
        per_cf = (prefill + new_tokens * per_step) / batch
        rows.append((batch, ms, per_cf))
        print(
            f"batch {batch}: prefill {prefix_len} tokens {prefill:.3f} s; decode "
            f"{ms:.3f} ms/step ({ms / batch:.3f} ms/token/row); {per_cf * batch:.3g} s per "
            f"batch, {per_cf:.3g} s per counterfactual; ratio to bound {ms / bound_ms:.2f}x"
        )
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    one = next((r for r in rows if r[0] == 1), None)
    if one is not None:
        verdict = "met" if one[1] <= 1.5 * bound_ms else "NOT met"
        print(
            f"target batch-1 decode <= 1.5x bound ({1.5 * bound_ms:.3f} ms): {verdict} "
            f"({one[1] / bound_ms:.2f}x)"
            + (" [tiny shapes on CPU: not meaningful]" if preset == "tiny" else "")
        )


if __name__ == "__main__":
    main()
