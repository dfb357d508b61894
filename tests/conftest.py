import os
import sys
from pathlib import Path

import pytest
import torch

# Independent reference implementations (plain loops, float64) that tests import by module name.
sys.path.insert(0, str(Path(__file__).parent / "references"))

# Like PML's TEST_DEVICE / TEST_DTYPES, but defaulting to what every machine has.
TEST_DEVICE = torch.device(os.environ.get("PML_RECALLK_TEST_DEVICE", "cpu"))
TEST_DTYPES = [getattr(torch, name) for name in os.environ.get("PML_RECALLK_TEST_DTYPES", "float32,float64").split(",")]


@pytest.fixture
def device():
    return TEST_DEVICE


@pytest.fixture(params=TEST_DTYPES, ids=str)
def dtype(request):
    return request.param
