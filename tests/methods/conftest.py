"""Fixtures shared by the method tests; the builders they use are in method_setups.py."""
import pytest
from method_setups import lenet_setup


@pytest.fixture(scope="module")
def lenet():
    """The LeNet-5 Fashion-MNIST setting: (baseline model, test batches, calibration batches, bundle)."""
    return lenet_setup()
