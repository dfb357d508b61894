"""The package's logger and the commands' stderr lines (pml_recallk/_log.py)."""

from __future__ import annotations

import logging
import subprocess
import sys

from pml_recallk._log import log_to_stderr


def test_the_library_prints_nothing_until_a_program_asks():
    """In a fresh process (a command run by another test in this one has installed its handler)."""
    code = "import logging, pml_recallk.experiments.train; logging.getLogger('pml_recallk.x').info('loading ...')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr == ""


def test_a_command_prints_each_record_once_as_one_prefixed_line_on_the_current_stderr(capsys):
    log_to_stderr("pml-recallk", "pml_recallk.test_log")
    log_to_stderr("pml-recallk", "pml_recallk.test_log")  # a second command in the same process
    logging.getLogger("pml_recallk.test_log.child").info("loading %s ...", "glyphs")
    assert capsys.readouterr().err == "pml-recallk: loading glyphs ...\n"


def test_a_child_with_its_own_prefix_is_not_printed_again_by_the_parent(capsys):
    log_to_stderr("pml-recallk")
    log_to_stderr("pml-recallk benchmark", "pml_recallk.benchmark.test_log")
    logging.getLogger("pml_recallk.benchmark.test_log").info("2 runs to go")
    assert capsys.readouterr().err == "pml-recallk benchmark: 2 runs to go\n"
