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


@pytest.fixture(scope="session", autouse=True)
def _private_progemu_home(tmp_path_factory):
    """The whole run uses its own cache folder, never the user's. Session-wide (not per test)
    so that a module fixture may point PROGEMU_HOME elsewhere for its own tests."""
    old = os.environ.get("PROGEMU_HOME")
    os.environ["PROGEMU_HOME"] = str(tmp_path_factory.getbasetemp() / "progemu_home")
    yield
    if old is None:
        os.environ.pop("PROGEMU_HOME", None)
    else:
        os.environ["PROGEMU_HOME"] = old
