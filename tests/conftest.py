import json
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


# The tiny run of the command and experiment tests: 10 classes of 16-px glyphs, a 4-wide CNN, batches of 16, 2 steps
# an epoch. A test file adds its epochs and what it tests (``--set`` arguments: ``tiny_cli_args``).
TINY_RUN = (
    "data.image_size=16",
    "data.max_classes=10",
    "data.batch_size=16",
    "train.iterations_per_epoch=2",
    "eval.batch_size=64",
    "model.width=4",
    "model.embedding_size=16",
)


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory):
    """One glyph table for the session: the tiny runs render their glyphs once."""
    return tmp_path_factory.mktemp("glyph-cache")


@pytest.fixture(scope="session")
def tiny_overrides(glyph_cache) -> list[str]:
    """:data:`TINY_RUN` with the session's glyph cache, for ``resolve_config(overrides=...)``."""
    return [*TINY_RUN, f"data.glyphs_cache_dir={json.dumps(str(glyph_cache))}"]


@pytest.fixture(scope="session")
def tiny_cli_args(tiny_overrides) -> list[str]:
    """:func:`tiny_overrides` as ``pml-recallk train`` arguments (``--set KEY=VALUE`` each)."""
    return [argument for override in tiny_overrides for argument in ("--set", override)]
