"""The CPU thread policy (progemu_lite.runtime): explicit choices win, small machines get one
thread, and it is applied once per process. Runs on the real torch thread pool."""

from __future__ import annotations

import pytest
import torch

from progemu_lite import runtime
from progemu_lite.runtime import (
    THREADS_ENV,
    configure_torch_threads,
    thread_policy,
    usable_cpus,
)


@pytest.fixture
def fresh(monkeypatch):
    """A process where the policy has not been applied yet; torch's count restored after."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_applied", None)
    for name in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    torch.set_num_threads(threads)


def test_small_machines_get_one_thread_larger_ones_keep_torchs_default():
    assert thread_policy(2, environ={}, cpus=2).threads == 1
    assert thread_policy(1, environ={}, cpus=1) is None  # already one thread
    assert thread_policy(8, environ={}, cpus=8) is None
    # A count other than one per CPU was chosen by someone: it stays.
    assert thread_policy(3, environ={}, cpus=2) is None


def test_explicit_environment_wins():
    setting = thread_policy(2, environ={THREADS_ENV: " 3 "}, cpus=2)
    assert setting.threads == 3 and THREADS_ENV in setting.reason
    assert thread_policy(8, environ={THREADS_ENV: "1"}, cpus=8).threads == 1
    assert thread_policy(2, environ={"OMP_NUM_THREADS": "2"}, cpus=2) is None
    assert thread_policy(2, environ={"MKL_NUM_THREADS": "2"}, cpus=2) is None
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match=THREADS_ENV):
            thread_policy(2, environ={THREADS_ENV: bad}, cpus=2)


def test_progemu_threads_sets_torch(fresh):
    fresh.setenv(THREADS_ENV, "1")
    torch.set_num_threads(usable_cpus())
    setting = configure_torch_threads()
    assert torch.get_num_threads() == 1 and setting.threads == 1
    assert setting.describe() == f"1 torch thread ({THREADS_ENV}=1)"


def test_omp_num_threads_leaves_torch_alone(fresh):
    fresh.setenv("OMP_NUM_THREADS", str(usable_cpus()))
    torch.set_num_threads(usable_cpus())
    setting = configure_torch_threads()
    assert torch.get_num_threads() == usable_cpus() and "OMP_NUM_THREADS" in setting.reason


def test_a_count_set_in_the_process_is_kept(fresh):
    chosen = usable_cpus() + 1  # never torch's own one-per-CPU default
    torch.set_num_threads(chosen)
    assert configure_torch_threads().threads == chosen
    assert torch.get_num_threads() == chosen


def test_applied_once_so_later_user_changes_stay(fresh):
    torch.set_num_threads(usable_cpus())
    first = configure_torch_threads()
    expected = 1 if usable_cpus() <= runtime.SMALL_MACHINE_CPUS else usable_cpus()
    assert first.threads == torch.get_num_threads() == expected
    torch.set_num_threads(2)
    again = configure_torch_threads()
    assert torch.get_num_threads() == 2 and again.threads == 2
    if expected != 2:
        assert again.reason == "as set in this process"
