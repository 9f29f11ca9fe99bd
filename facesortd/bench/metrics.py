"""Clustering quality: pairwise and BCubed precision/recall/F1 against true labels.

Used by ``facesortd eval``, the clustering tests and ``tools/tune_clustering.py``. A predicted label
of -1 (DBSCAN noise, an unassigned face, an image without a face) is a cluster of its own; other
negative labels (the clustering's provisional new identities) are ordinary clusters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import numpy as np

__all__ = ["Scores", "score", "bcubed", "pairwise"]


@dataclass(frozen=True)
class Scores:
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    n_items: int
    n_true: int            # distinct true labels
    n_clusters: int        # predicted clusters, noise not counted
    noise_fraction: float  # share of items labelled -1

    def as_dict(self) -> dict:
        return asdict(self)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _contingency(true: Sequence[Hashable], pred: Sequence[int]):
    """Counts n_ij of items with true label i in predicted cluster j (noise made singletons),
    with the size of class i and of cluster j for each nonzero cell, and all class/cluster sizes."""
    pred = np.asarray(pred, dtype=np.int64).copy()
    if len(pred) != len(true):
        raise ValueError(f"{len(true)} true labels but {len(pred)} predictions")
    noise = pred == -1
    pred[noise] = pred.max(initial=0) + 1 + np.arange(int(noise.sum()))
    _, t = np.unique(np.array([str(x) for x in true], dtype=object), return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    cells, n_ij = np.unique(np.stack([t, p]), axis=1, return_counts=True)
    class_sizes, cluster_sizes = np.bincount(t), np.bincount(p)
    return (n_ij.astype(np.float64), class_sizes[cells[0]].astype(np.float64),
            cluster_sizes[cells[1]].astype(np.float64), class_sizes, cluster_sizes)


def bcubed(true: Sequence[Hashable], pred: Sequence[int]) -> tuple[float, float, float]:
    """BCubed precision, recall, F1: per-item overlap of its cluster and its class, averaged."""
    if len(true) == 0:
        return 1.0, 1.0, 1.0
    n_ij, true_size, pred_size, _, _ = _contingency(true, pred)
    p = float((n_ij ** 2 / pred_size).sum() / len(true))
    r = float((n_ij ** 2 / true_size).sum() / len(true))
    return p, r, _f1(p, r)


def pairwise(true: Sequence[Hashable], pred: Sequence[int]) -> tuple[float, float, float]:
    """Pairwise precision, recall, F1 over item pairs (1.0 where there are no pairs to judge)."""
    if len(true) == 0:
        return 1.0, 1.0, 1.0
    n_ij, _, _, class_sizes, cluster_sizes = _contingency(true, pred)

    def pairs(c: np.ndarray) -> float:
        c = np.asarray(c, dtype=np.float64)
        return float((c * (c - 1) / 2).sum())

    tp, true_pairs, pred_pairs = pairs(n_ij), pairs(class_sizes), pairs(cluster_sizes)
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return p, r, _f1(p, r)


def score(true: Sequence[Hashable], pred: Sequence[int]) -> Scores:
    """Every figure at once; ``true`` may hold any labels (folder names), ``pred`` integers."""
    pred_arr = np.asarray(pred, dtype=np.int64)
    pp, pr, pf = pairwise(true, pred_arr)
    bp, br, bf = bcubed(true, pred_arr)
    n = len(pred_arr)
    return Scores(pp, pr, pf, bp, br, bf, n_items=n,
                  n_true=len(set(map(str, true))),
                  n_clusters=len(np.unique(pred_arr[pred_arr != -1])),
                  noise_fraction=float((pred_arr == -1).sum() / n) if n else 0.0)
