import os

import pytest
import torch

# Two xdist workers share two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("PRUNEKIT_PROGRESS", "0")

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True, scope="session")
def _baseline_store(tmp_path_factory):
    """The user baseline store of every test: an empty tmp folder (the shipped baselines are still found)."""
    old = os.environ.get("PRUNEKIT_BASELINES")
    os.environ["PRUNEKIT_BASELINES"] = str(tmp_path_factory.mktemp("baseline-store"))
    yield
    if old is None:
        os.environ.pop("PRUNEKIT_BASELINES", None)
    else:
        os.environ["PRUNEKIT_BASELINES"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def fashion_available() -> bool:
    return os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))


def pytest_collection_modifyitems(config, items):
    # `@pytest.mark.needs_fashion` skips a test when the embedded data set is not installed (`make data`).
    if fashion_available():
        return
    skip = pytest.mark.skip(reason="Fashion-MNIST not installed (make data)")
    for item in items:
        if "needs_fashion" in item.keywords:
            item.add_marker(skip)
