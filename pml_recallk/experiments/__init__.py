"""The application wing: experiments from a config (``pml-recallk train``), built on the library.

* :mod:`.config`: the schema of a config, the recipes (``recipes/*.toml``, package data) and ``--set`` overrides;
* :mod:`.registry`: the names a config chooses from (data sets, models, losses);
* :mod:`.builders`: config → data, model, loss, optimisers, tester and trainer;
* :mod:`.checkpoints`: atomic checkpoints, exact resumption, ``model.init_checkpoint``;
* :mod:`.train`: :func:`run_experiment` and :func:`evaluate_checkpoint`;
* :mod:`.plots`: the plots of a run.

The library (``losses``, ``trainers``, ``evaluation``, ``datasets``, ``models``) never imports this package.
Imports are lazy: ``from pml_recallk.experiments import resolve_config`` does not load torch's trainer stack.

Example:
    >>> from pml_recallk.experiments import resolve_config
    >>> resolve_config(overrides=["train.epochs=2"])["train"]["epochs"]
    2
"""

from .._lazy import lazy_names

_PUBLIC = {
    "ConfigError": ".config",
    "RECIPES": ".config",
    "SCHEMA": ".config",
    "default_config": ".config",
    "dumps_toml": ".config",
    "resolve_config": ".config",
    "LOSSES": ".registry",
    "LossEntry": ".registry",
    "register_loss": ".registry",
    "CHECKPOINT_FORMAT": ".checkpoints",
    "load_checkpoint": ".checkpoints",
    "evaluate_checkpoint": ".train",
    "run_experiment": ".train",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_names(globals(), _PUBLIC)
