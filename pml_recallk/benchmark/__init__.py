"""The loss benchmark, built on :mod:`pml_recallk.experiments`: arms × seeds, one protocol, one report.

* :mod:`.sweep`: :class:`Arm` (a name, a base loss, config overrides), :class:`Sweep` and sweep files;
* :mod:`.runner`: :func:`run_sweep` (each run is :func:`pml_recallk.experiments.run_experiment`, resumable per
  arm and seed) and the command line (``pml-recallk benchmark``, ``python benchmarks/run.py``);
* :mod:`.report`: the table (mean ± std over seeds of Recall@k and MAP@R), per-seed CSV and plots.

Not the repository's ``benchmarks/`` folder (scripts and their committed results, not installed), whose
``run.py`` is this package's command.

The losses and their settings are the experiments' registry (:data:`LOSSES`, :func:`register_loss`), so that
``pml-recallk train --set loss.name=multi_similarity`` and a benchmark arm build the same loss.

Example (see ``docs/benchmark.md``)::

    from pml_recallk.benchmark import Arm, Sweep, run_sweep
    from pml_recallk.experiments import resolve_config
    sweep = Sweep(resolve_config(), arms=[Arm("rsk", "rsk"), Arm("ms", "multi_similarity")], seeds=[0, 1])
    run_sweep(sweep, "runs/bench")
"""

from .._lazy import lazy_names

_PUBLIC = {
    "Arm": ".sweep",
    "Sweep": ".sweep",
    "FLOORS": ".sweep",
    "PRETRAINED": ".sweep",
    "UNTRAINED": ".sweep",
    "load_sweep": ".sweep",
    "build_parser": ".runner",
    "main": ".runner",
    "run_arm": ".runner",
    "run_sweep": ".runner",
    "RESULT_FORMAT": ".report",
    "load_results": ".report",
    "read_result": ".report",
    "summarize": ".report",
    "write_report": ".report",
}
# The losses are the experiments' (one registry).
_REGISTRY = dict.fromkeys(("LOSSES", "register_loss", "LossEntry"), "pml_recallk.experiments.registry")

__all__ = sorted([*_PUBLIC, *_REGISTRY])


__getattr__, __dir__ = lazy_names(globals(), {**_PUBLIC, **_REGISTRY})
