import os

import pytest
import torch

# Two xdist workers share two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("PRUNEKIT_PROGRESS", "0")

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def fashion_available() -> bool:
    return os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))


needs_fashion = pytest.mark.skipif(not fashion_available(), reason="Fashion-MNIST not installed (make data)")
