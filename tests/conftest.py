import os

import pytest
import torch

import svdzip


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (cuda marker)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def native():
    """The native ops must be loaded for tests that exercise them: a missing build fails here
    instead of silently testing the reference against itself."""
    if os.environ.get("SVDZIP_DISABLE_NATIVE"):
        pytest.fail("native tests run with SVDZIP_DISABLE_NATIVE set")
    assert svdzip.native_available(), svdzip._native.reason()
    return torch.ops.svdzip


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
