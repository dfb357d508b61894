"""PML's ``GlobalEmbeddingSpaceTester`` for splits that hold their own queries and gallery (a CSV listing's
``is_query``/``is_gallery`` columns).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from pml_recallk.evaluation import RecallAtKAccuracyCalculator
    >>> data = TensorDataset(torch.eye(4), torch.tensor([0, 0, 1, 1]))
    >>> tester = QueryGalleryTester(accuracy_calculator=RecallAtKAccuracyCalculator(k_values=(1,)))
    >>> tester.test({"test": data}, 0, torch.nn.Identity())["test"]["recall_at_1_level0"] <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from torch.utils.data import Dataset, Subset

__all__ = ["QueryGalleryTester"]


class QueryGalleryTester(GlobalEmbeddingSpaceTester):
    """PML's ``GlobalEmbeddingSpaceTester`` that also evaluates a split's queries against its gallery.

    A split whose dataset has ``query_gallery`` (``(is_query, is_gallery)``, a CSV listing's columns) is cut into
    three parts: the queries that are also gallery items (``Q∩G``), the queries that are not (``Q−G``) and the rest
    of the gallery (``G−Q``). PML evaluates ``Q∩G`` against ``[Q∩G, G−Q]`` with its self-match left out (query i is
    reference i) and ``Q−G`` against the same gallery; the split's metric is the mean of the two weighted by their
    numbers of queries, which is the mean over all queries (Recall@k and MAP@R are means over queries). Other
    splits are evaluated against themselves, as PML does.
    """

    def test(self, dataset_dict, epoch, trunk_model, embedder_model=None, splits_to_eval=None, collate_fn=None):
        parts, plan = self._query_gallery_parts(dataset_dict)
        if not plan:
            return super().test(dataset_dict, epoch, trunk_model, embedder_model, splits_to_eval, collate_fn)
        hook, self.end_of_testing_hook = self.end_of_testing_hook, None
        try:
            evaluate = [(name, [name]) for name in dataset_dict if name not in plan]
            for queries in plan.values():
                evaluate += [(part, list(queries["gallery"])) for part in queries["queries"]]
            super().test(parts, epoch, trunk_model, embedder_model, evaluate, collate_fn)
            for name, queries in plan.items():
                self.all_accuracies[name] = _weighted(self.all_accuracies, queries["queries"], epoch)
                for part in {*queries["queries"], *queries["gallery"]}:
                    self.all_accuracies.pop(part, None)
        finally:
            self.end_of_testing_hook = hook
        if hook is not None:
            hook(self)
        return self.all_accuracies

    @staticmethod
    def _query_gallery_parts(dataset_dict: Mapping[str, Dataset]) -> tuple[dict[str, Dataset], dict[str, dict]]:
        parts, plan = dict(dataset_dict), {}
        for name, dataset in dataset_dict.items():
            flags = getattr(dataset, "query_gallery", None)
            if flags is None:
                continue
            is_query, is_gallery = flags
            del parts[name]
            pieces = {
                f"{name}·queries_in_gallery": np.flatnonzero(is_query & is_gallery),
                f"{name}·queries": np.flatnonzero(is_query & ~is_gallery),
                f"{name}·gallery": np.flatnonzero(~is_query & is_gallery),
            }
            for part, indices in pieces.items():
                if len(indices):
                    parts[part] = Subset(dataset, indices.tolist())
            keys = list(pieces)
            plan[name] = {
                "queries": {keys[0]: len(pieces[keys[0]]), keys[1]: len(pieces[keys[1]])},
                "gallery": [k for k in (keys[0], keys[2]) if len(pieces[k])],
            }
            plan[name]["queries"] = {k: n for k, n in plan[name]["queries"].items() if n}
        return parts, plan


def _weighted(accuracies: Mapping[str, Mapping[str, Any]], counts: Mapping[str, int], epoch: int) -> dict[str, Any]:
    """The per-query mean of every metric over query parts of ``counts`` queries each."""
    total = sum(counts.values())
    keys = [k for k in accuracies[next(iter(counts))] if k != "epoch"]
    merged = {k: sum(accuracies[part][k] * n for part, n in counts.items()) / total for k in keys}
    return {"epoch": epoch, **merged}
