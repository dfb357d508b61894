"""What the measuring scripts in ``benchmarks/`` share: a measurement in a process of its own, memory and time
probes, and one way to write results.

A script measures each configuration in a fresh process (so that its peak resident memory is its own): the parent
calls :func:`run_worker` with the script's own path and its ``--worker ...`` arguments; the worker does the work
and ends with :func:`print_worker_result`, one JSON object on the last line of its standard output, which
:func:`run_worker` returns. A worker that fails, or runs past ``timeout``, raises :class:`WorkerFailed` with a
one-line ``note`` (the last line of its standard error, or the time limit) that the script puts in its table.

Example (a worker that is a one-line program)::

    >>> import sys
    >>> run_worker("-c", ["import json; print('log'); print(json.dumps({'x': 1}))"])
    {'x': 1}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import replace_atomically, write_json_atomic

__all__ = [
    "MIB",
    "PeakResidentMemory",
    "resident_bytes",
    "WorkerFailed",
    "cpu_seconds",
    "current_rss_mb",
    "gradient_spread",
    "peak_rss_mb",
    "print_worker_result",
    "run_worker",
    "timed",
    "write_results",
]

MIB = 2**20


class WorkerFailed(RuntimeError):
    """A worker process that ended without a result; ``note`` says why in one short line."""

    def __init__(self, command: Sequence[str], note: str, stderr: str = ""):
        super().__init__(f"{' '.join(command)}: {note}")
        self.note, self.stderr = note, stderr


def run_worker(script: str | os.PathLike, args: Sequence[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python script *args`` in a new process; return the JSON object on the last line of its output.

    ``script`` is a path (the calling script passes ``__file__``), or ``"-c"`` with the program as the first of
    ``args``. Raises :class:`WorkerFailed` when the process exits with an error, prints no JSON object last, or
    runs longer than ``timeout`` seconds (then it is killed).
    """
    command = [sys.executable, str(script), *map(str, args)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise WorkerFailed(command, f"> {timeout:.0f} s") from None
    last_error = (done.stderr.strip().splitlines() or ["failed"])[-1][:160]
    if done.returncode != 0:
        raise WorkerFailed(command, last_error, done.stderr)
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        raise WorkerFailed(command, "printed no JSON object on its last line", done.stderr)
    return result


def print_worker_result(result: Mapping[str, Any]) -> None:
    """What a worker ends with: ``result`` as one JSON line on standard output (read by :func:`run_worker`)."""
    print(json.dumps(result), flush=True)


def write_results(out: str | os.PathLike, payload: Mapping[str, Any], markdown: str) -> None:
    """Write ``out.json`` (``payload``, indented) and ``out.md`` (``markdown``) atomically: the one way the
    scripts write their results (``out`` without a suffix, e.g. ``benchmarks/results/loss_speed``)."""
    out = Path(out)
    write_json_atomic(dict(payload), out.with_suffix(".json"))
    text = markdown if markdown.endswith("\n") else markdown + "\n"
    replace_atomically(out.with_suffix(".md"), lambda f: f.write(text.encode("utf-8")))


# ------------------------------------------------------------------------------------------ memory and time


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux: ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system time of this process, all threads: less disturbed than wall time on a shared machine."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(function: Callable[[], Any]) -> tuple[float, float]:
    """``(CPU seconds of this thread, wall seconds)`` of one call of ``function``."""
    cpu, wall = time.thread_time(), time.perf_counter()
    function()
    return time.thread_time() - cpu, time.perf_counter() - wall


def resident_bytes() -> int:
    """The resident set size of this process now, in bytes (``/proc/self/statm`` on Linux, else ``psutil``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import psutil

        return psutil.Process().memory_info().rss


class PeakResidentMemory:
    """The resident set size (bytes) on entry (``before``) and its maximum inside the block (``peak``), sampled
    every millisecond by a thread: unlike ``ru_maxrss``, it can be measured again for each block of a process."""

    def __enter__(self) -> PeakResidentMemory:
        self.before = self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


# ------------------------------------------------------------------------------------------------ measures


def gradient_spread(norms: np.ndarray) -> dict[str, float]:
    """How evenly a batch's gradient is spread over its items, from the per-item norms ``g_i = ‖∂L/∂e_i‖`` (B,).

    * ``participation``: ``(Σ g)² / (B Σ g²)``, 1 when every item gets the same gradient, 1/B when one gets it all;
    * ``share_for_90``: the fewest items whose ``g²`` reach 90 % of ``Σ g²``, as a fraction of B;
    * ``silent``: the fraction of items with ``g < 1 %`` of the largest.

    A batch without any gradient is ``{0, 0, 1}`` (used by ``benchmarks/gradient_share.py``).

    Example:
        >>> gradient_spread(np.array([0.0, 0.0, 2.0, 0.0]))
        {'participation': 0.25, 'share_for_90': 0.25, 'silent': 0.75}
    """
    total = norms.sum()
    if total == 0:
        return {"participation": 0.0, "share_for_90": 0.0, "silent": 1.0}
    squares = np.sort(norms**2)[::-1]
    # The fewest items whose squares reach 90 % of the sum (a relative 1e-12 for the rounding of the cumulative sum).
    needed = int(np.searchsorted(np.cumsum(squares), 0.9 * squares.sum() * (1 - 1e-12))) + 1
    return {
        "participation": float(total**2 / (len(norms) * (norms**2).sum())),
        "share_for_90": needed / len(norms),
        "silent": float((norms < 0.01 * norms.max()).mean()),
    }
