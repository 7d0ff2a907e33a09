"""How many CPU threads torch uses: one policy for the course, the CLI and the benchmarks.

The course models are small (a few million parameters), so a second thread gains little: on an
idle 2-core machine two threads were at most ~1.3x faster than one. On a 2-core machine where
another job holds a core, torch's OpenMP threads spin-wait for each other and the same work
becomes dramatically slower: an explorer Generate click took 59 s with 2 threads and 1.24 s with
1. Hence the policy of :func:`configure_torch_threads`, in this order:

1. ``PROGEMU_THREADS=N`` in the environment: use ``N`` threads (an explicit choice always wins).
2. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set: torch already follows them; leave it alone.
3. The thread count is not one per CPU (torch's default), so it was chosen already (e.g. a
   ``torch.set_num_threads`` call): leave it.
4. At most 2 usable CPUs: 1 thread.
5. Otherwise: torch's default (one thread per core).

It is applied once per process (later calls report and change nothing), so a user who calls
``torch.set_num_threads`` after the first model loaded is never overridden.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

THREADS_ENV = "PROGEMU_THREADS"
# Environment variables through which a user already told torch (OpenMP, MKL) what to use.
TORCH_THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Machines with this many usable CPUs or fewer get one thread.
SMALL_MACHINE_CPUS = 2

# What configure_torch_threads decided in this process (None: not applied yet).
_applied: ThreadSetting | None = None


@dataclass(frozen=True)
class ThreadSetting:
    """The thread count torch uses and why."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} torch thread{'s' if self.threads != 1 else ''} ({self.reason})"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_policy(
    current: int, *, environ: dict | None = None, cpus: int | None = None
) -> ThreadSetting | None:
    """The thread count the policy picks, or None to leave torch as it is.

    ``current``: torch's thread count now; ``environ``: the environment (default
    ``os.environ``); ``cpus``: usable CPUs (default :func:`usable_cpus`). A count different from
    the CPU count means someone chose it (torch's default is one thread per core), so it stays.
    """
    environ = os.environ if environ is None else environ
    cpus = usable_cpus() if cpus is None else cpus
    value = environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a whole number of threads >= 1, got {value!r}")
        return ThreadSetting(threads, f"{THREADS_ENV}={threads}")
    for name in TORCH_THREAD_ENVS:
        if environ.get(name, "").strip():
            return None
    if current != cpus:
        return None
    if cpus <= SMALL_MACHINE_CPUS and current > 1:
        return ThreadSetting(
            1,
            f"{cpus} CPUs: one thread is nearly as fast on an idle machine and far faster on a "
            f"busy one; set {THREADS_ENV} to choose",
        )
    return None


def configure_torch_threads() -> ThreadSetting:
    """Apply :func:`thread_policy` to torch (once per process) and say what torch now uses.

    Call it before running a course model: :func:`progemu_lite.widgets.course_pipeline` and the
    benchmarks do. A bad ``PROGEMU_THREADS`` raises ValueError naming the variable.
    """
    global _applied
    import torch

    if _applied is not None:
        now = torch.get_num_threads()
        return _applied if now == _applied.threads else ThreadSetting(now, "as set in this process")
    current = torch.get_num_threads()
    choice = thread_policy(current)
    if choice is None:
        explicit = [n for n in TORCH_THREAD_ENVS if os.environ.get(n, "").strip()]
        if explicit:
            reason = f"set by {explicit[0]}"
        elif current != usable_cpus():
            reason = "left as it was: not one per CPU, so chosen before"
        else:
            reason = "torch's default: one per CPU"
        choice = ThreadSetting(current, reason)
    elif choice.threads != current:
        torch.set_num_threads(choice.threads)
    _applied = choice
    return choice
