import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _private_progemu_home(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder, never the user's."""
    if "PROGEMU_HOME" not in os.environ or os.environ.get("CI"):
        monkeypatch.setenv("PROGEMU_HOME", str(tmp_path_factory.getbasetemp() / "progemu_home"))
