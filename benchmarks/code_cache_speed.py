"""How fast `progemu-lite train` gets its image codes: encoded by the VQ, or copied (--reuse-codes).

Builds the image-code cache of a data folder's training and validation pairs twice in a temporary
folder, in one run: first by encoding every image with the VQ of the given pipeline (the
baseline), then with the first cache as ``reuse_from``, which copies the codes of identical
images (found by their pixel digests) instead. Prints pairs/s for both, the ratio, and whether
the two caches hold the same codes. A later stage of ``make train-lite`` meets its
predecessor's images again this way.

    .venv/bin/python benchmarks/code_cache_speed.py [--data runs/lite-data]
        [--model progemu_lite/weights/lite] [--max-pairs N] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from progemu_lite.model.pipeline import ProgEmuPipeline  # noqa: E402
from progemu_lite.model.train import encode_pair_cache, load_splits  # noqa: E402
from progemu_lite.tokenization.vq import IMAGE_SIZES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/lite-data"), help="data folder")
    parser.add_argument(
        "--model", type=Path, default=Path("progemu_lite/weights/lite"), help="pipeline folder"
    )
    parser.add_argument("--preset", default="lite", choices=("tiny", "lite", "full"))
    parser.add_argument("--max-pairs", type=int, default=None, help="the first N pairs only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = ProgEmuPipeline.from_pretrained(
        args.model, preset=args.preset, device="cpu", dtype=torch.float32, progress=False
    )
    vq = pipe.model.model.vqmodel
    train, val = load_splits(args.data)
    records = (train + val)[: args.max_pairs]
    size = IMAGE_SIZES[args.preset]
    print(
        f"{len(records)} pairs of {args.data}, VQ of {args.model}, {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory(prefix="code-cache-speed-") as folder:
        first, second = Path(folder) / "first", Path(folder) / "second"
        start = time.perf_counter()
        encoded, _, _ = encode_pair_cache(args.data, records, vq, size, first, progress=False)
        encode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        copied, _, _ = encode_pair_cache(
            args.data, records, vq, size, second, reuse_from=[first], progress=False
        )
        copy_seconds = time.perf_counter() - start
    n = len(records)
    print(f"encoded: {encode_seconds:.1f} s ({n / encode_seconds:.0f} pairs/s)")
    print(f"copied (--reuse-codes): {copy_seconds:.1f} s ({n / copy_seconds:.0f} pairs/s)")
    print(f"ratio copied / encoded: {encode_seconds / copy_seconds:.1f}x")
    print(f"same codes: {bool(np.array_equal(encoded, copied))}")


if __name__ == "__main__":
    main()
