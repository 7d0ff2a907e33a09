"""How fast `progemu-lite phantom` writes pairs (rendering + PNG writing into a temp folder).

Prints pairs/s at 256x256 and 512x512 with the product settings (per-patient renderer reuse,
2 worker processes), and, measured in the same run, two baselines at 256x256: one process, and one
process without the per-patient renderer (anatomy) cache. Peak memory from resource.getrusage
(this process, and the largest worker). Target: at least 30 pairs/s at 256x256.

    .venv/bin/python benchmarks/phantom_speed.py [--patients 20] [--pairs-per-patient 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progemu_lite.phantom.dataset import PhantomConfig, generate  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished workers."""
    own, workers = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def measure(
    config: PhantomConfig, workers: int, reuse_renderer: bool = True
) -> tuple[float, float]:
    """(pairs per wall-clock second, pairs per CPU second). The second does not depend on what
    else the machine is running, so it is the fairer figure on a shared machine."""
    with tempfile.TemporaryDirectory(prefix="phantom-speed-") as out:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        counts = generate(
            out, config, workers=workers, progress=False, reuse_renderer=reuse_renderer
        )
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    assert counts["written"] == config.patients * config.pairs_per_patient
    return counts["written"] / elapsed, counts["written"] / cpu


def peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--pairs-per-patient", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    def config(size: int) -> PhantomConfig:
        return PhantomConfig(args.patients, args.pairs_per_patient, size, seed=0)

    n = args.patients * args.pairs_per_patient
    print(f"{n} pairs per measurement ({args.patients} patients x {args.pairs_per_patient})")
    cases = {
        "256 product": (256, args.workers, True),
        "256 one process": (256, 1, True),
        "256 one process, no renderer cache": (256, 1, False),
        "512 product": (512, args.workers, True),
        "512 one process": (512, 1, True),
    }
    wall, per_cpu = {}, {}
    for name, (size, workers, reuse) in cases.items():
        wall[name], per_cpu[name] = measure(config(size), workers, reuse)
        print(f"{name:36s} {wall[name]:7.1f} pairs/s   {per_cpu[name]:7.1f} pairs per CPU-s")
    print(
        f"ratio 256: product / one process = {wall['256 product'] / wall['256 one process']:.2f}x"
        f" (wall); renderer cache / no cache = "
        f"{per_cpu['256 one process'] / per_cpu['256 one process, no renderer cache']:.2f}x (CPU)"
    )
    print(
        f"ratio 512: product / one process = {wall['512 product'] / wall['512 one process']:.2f}x"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    target = 30.0
    verdict = "meets" if wall["256 product"] >= target else "MISSES"
    print(f"256x256 target {target:.0f} pairs/s: {verdict} ({wall['256 product']:.1f})")
    print(
        f"peak memory: main process {peak_mib(resource.RUSAGE_SELF):.0f} MiB, "
        f"largest worker {peak_mib(resource.RUSAGE_CHILDREN):.0f} MiB"
    )


if __name__ == "__main__":
    main()
