"""Deprecated: the experiment config moved to :mod:`pml_recallk.experiments.config` (this alias goes in 0.3)."""

import warnings

from .experiments.config import *  # noqa: F403
from .experiments.config import __all__  # noqa: F401

warnings.warn(
    "pml_recallk.config is deprecated; import from pml_recallk.experiments.config (or pml_recallk.experiments)",
    DeprecationWarning,
    stacklevel=2,
)
