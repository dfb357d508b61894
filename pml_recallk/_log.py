"""The package's one way to say what it is doing: the ``pml_recallk`` logger (``logging``, like PML's ``PML``).

The library logs progress at INFO and notes at WARNING and configures no handler, as a library should: a program
that uses it chooses what to show (``logging.basicConfig(level=logging.INFO)`` shows everything). The commands
call :func:`log_to_stderr`, which prints each record as one line ``<prefix>: <message>`` on stderr.

Example:
    >>> import io, contextlib, logging
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     log_to_stderr("pml-recallk", "pml_recallk.example")
    ...     logging.getLogger("pml_recallk.example").info("loading glyphs ...")
    >>> err.getvalue()
    'pml-recallk: loading glyphs ...\\n'
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER", "log_to_stderr"]

LOGGER = logging.getLogger("pml_recallk")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes: a caller (or a test) may have replaced it."""

    def __init__(self, prefix: str):
        super().__init__()
        self.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property always answers sys.stderr
        pass


def log_to_stderr(prefix: str, name: str = LOGGER.name) -> None:
    """Print the INFO (and higher) records of the logger ``name`` as ``<prefix>: <message>`` lines on stderr.

    Once per logger: a second call replaces the first's handler (a command run twice in one process prints each
    line once). A logger below ``pml_recallk`` with a prefix of its own (the benchmark's) stops its records there,
    else the ``pml_recallk`` handler would print them a second time; the others go on to the root logger, which a
    command leaves without handlers.
    """
    logger = logging.getLogger(name)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_StderrHandler(prefix))
    logger.setLevel(logging.INFO)
    logger.propagate = name == LOGGER.name
