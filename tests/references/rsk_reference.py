"""A plain, slow, float64 implementation of docs/method.md §2, written independently of ``pml_recallk.functional``.

Loops over queries and positives with Python floats; the database of each query is listed explicitly.
"""

import math


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def cosine_matrix(a, b):
    """Cosine similarities of two lists of vectors (lists of floats)."""

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    a, b = [unit(v) for v in a], [unit(v) for v in b]
    return [[sum(x * y for x, y in zip(u, v)) for v in b] for u in a]


def per_query_recalls(
    sim,
    query_labels,
    db_labels,
    databases,
    self_columns,
    k_values,
    rank_temperature,
    k_temperatures,
    k_margin,
):
    """Surrogate recall per query and k. ``databases[q]``: the columns in q's database; ``self_columns[q]``: the
    column that is q itself (never a positive), or None. Returns {q: [R_k for k]} for queries with a positive."""
    out = {}
    for q, row in enumerate(sim):
        database = databases[q]
        positives = [z for z in database if db_labels[z] == query_labels[q] and z != self_columns[q]]
        if not positives:
            continue
        ranks = {}
        for p in positives:
            ranks[p] = 1.0 + sum(sigmoid((row[z] - row[p]) / rank_temperature) for z in database if z != p)
        recalls = []
        for k, tau_k in zip(k_values, k_temperatures):
            hits = sum(sigmoid((k + k_margin - ranks[p]) / tau_k) for p in positives)
            recalls.append(min(hits, k) / min(k, len(positives)))
        out[q] = recalls
    return out


def reference_loss(
    embeddings,
    labels,
    ref_emb=None,
    ref_labels=None,
    k_values=(1, 2, 4, 8, 16),
    rank_temperature=0.01,
    k_temperature=1.0,
    k_margin=0.0,
    count_query_in_rank=False,
    weights=None,
    similarity=None,
    calibration_weight=0.0,
    calibration_margins=(0.9, 0.6),
):
    """Mean of 1 − mean_k R̃_k(q) over queries with a positive (each multiplied by its weight, if given); with a
    ``calibration_weight`` λ, of (1 − λ)·(1 − mean_k R̃_k(q)) + λ·C(q) (:func:`calibration_per_query`)."""
    emb = embeddings.double().tolist()
    labels = [int(x) for x in labels]
    same_set = ref_emb is None
    ref = emb if same_set else ref_emb.double().tolist()
    ref_labels = labels if same_set else [int(x) for x in ref_labels]
    sim = similarity(emb, ref) if similarity is not None else cosine_matrix(emb, ref)
    n_db = len(ref)
    databases, self_columns = [], []
    for q in range(len(emb)):
        if same_set:
            self_columns.append(q)
            databases.append([z for z in range(n_db) if z != q or count_query_in_rank])
        else:
            self_columns.append(None)
            databases.append(list(range(n_db)))
    k_temps = [k_temperature] * len(k_values) if isinstance(k_temperature, (int, float)) else list(k_temperature)
    recalls = per_query_recalls(
        sim, labels, ref_labels, databases, self_columns, k_values, rank_temperature, k_temps, k_margin
    )
    if not recalls:
        return 0.0
    calibration = calibration_per_query(sim, labels, ref_labels, databases, self_columns, *calibration_margins)
    lam = calibration_weight
    losses = [
        ((1.0 - lam) * (1.0 - sum(r) / len(r)) + lam * calibration[q]) * (1.0 if weights is None else float(weights[q]))
        for q, r in recalls.items()
    ]
    return sum(losses) / len(losses)


def calibration_per_query(sim, query_labels, db_labels, databases, self_columns, positive_margin, negative_margin):
    """C(q) = mean over q's positives of max(0, α − s) + mean over its negatives of max(0, s − β); the column that is
    q itself is neither (an empty set adds 0)."""
    out = []
    for q, row in enumerate(sim):
        columns = [z for z in databases[q] if z != self_columns[q]]
        pulls = [max(0.0, positive_margin - row[z]) for z in columns if db_labels[z] == query_labels[q]]
        pushes = [max(0.0, row[z] - negative_margin) for z in columns if db_labels[z] != query_labels[q]]
        out.append((sum(pulls) / len(pulls) if pulls else 0.0) + (sum(pushes) / len(pushes) if pushes else 0.0))
    return out
