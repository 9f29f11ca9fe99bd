"""How likely each face's person is wrong: the review queue's order (issue 18).

A face's *doubt* compares how far it sits from its own person with how far it sits from the
nearest other person. Each person is stood for by the mean of its faces' vectors; a face is measured
against its own person's mean *without itself* (so the second face of a pair is measured against
the first, and a face that dragged its person's mean towards itself gains nothing), and against
every other person's mean. With ``own`` and ``other`` those two distances::

    score = own / (own + other) + own / eps / 2    (higher: more doubtful)

The first term is 0.5 where the face is as close to another person as to its own; the second makes
a face that only just reached its person (a single link at ``eps``) doubtful even when no other
person is near (a stranger chained into someone: its real person is not in the library). The other
person is the queue's *candidate*. Faces of a person of one face, and unassigned faces, get none.

Scores are written by the identity service after each assignment (the new faces) and each
recluster (every face) into ``face_doubt``; they are advice, never a decision, so a correction does
not rewrite them: the queue leaves out pinned (confirmed, moved) and unassigned faces itself.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = ["DOUBTFUL", "doubt", "write_doubt"]

#: Scores from here on get the subtle "doubtful" mark on a person's page: as close to another
#: person as to its own, or right at ``eps`` from its own.
DOUBTFUL = 0.75
_CHUNK = 4096


def doubt(matrix: np.ndarray, ident: np.ndarray, eps: float,
          rows: "np.ndarray | None" = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, score, candidate identity or -1) for the assigned faces among ``rows`` (default: all)
    of ``matrix`` whose person has at least two faces; ``ident`` is each row's identity (-1: none)."""
    assigned = ident >= 0
    people, inverse, sizes = np.unique(ident[assigned], return_inverse=True, return_counts=True)
    if rows is None:
        rows = np.flatnonzero(assigned)
    rows = np.asarray(rows, np.int64)
    rows = rows[ident[rows] >= 0]
    empty = np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64)
    if not len(people) or not len(rows):
        return empty
    # the sums of each person's vectors as one sparse product (no copy of the matrix)
    onehot = sparse.csr_matrix((np.ones(len(inverse), np.float32), (inverse, np.flatnonzero(assigned))),
                               shape=(len(people), len(ident)))
    sums = np.asarray(onehot @ matrix, np.float32)
    means = sums / sizes[:, None].astype(np.float32)
    mean_sq = np.einsum("ij,ij->i", means, means)
    own_k = np.searchsorted(people, ident[rows])
    rows = rows[sizes[own_k] >= 2]
    own_k = own_k[sizes[own_k] >= 2]
    if not len(rows):
        return empty
    score = np.empty(len(rows), np.float64)
    cand = np.full(len(rows), -1, np.int64)
    for lo in range(0, len(rows), _CHUNK):
        part, k = rows[lo:lo + _CHUNK], own_k[lo:lo + _CHUNK]
        v = matrix[part].astype(np.float32)
        v_sq = np.einsum("ij,ij->i", v, v)
        d2 = v_sq[:, None] + mean_sq[None, :] - 2.0 * (v @ means.T)
        n = sizes[k].astype(np.float32)
        loo = (sums[k] - v) / (n - 1)[:, None]             # own person's mean without the face
        own = np.linalg.norm(v - loo, axis=1)
        d2[np.arange(len(part)), k] = np.inf
        if len(people) > 1:
            best = np.argmin(d2, axis=1)
            other = np.sqrt(np.maximum(d2[np.arange(len(part)), best], 0.0))
            cand[lo:lo + len(part)] = people[best]
        else:
            other = np.full(len(part), np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(np.isfinite(other), own / np.maximum(own + other, 1e-12), 0.0)
        score[lo:lo + len(part)] = ratio + own / eps / 2
    return rows, score, cand


def write_doubt(conn, face_ids: np.ndarray, score: np.ndarray, candidate: np.ndarray,
                replace_all: bool = False) -> None:
    """Store scores (``replace_all``: these are every face's, drop the rest)."""
    if replace_all:
        conn.execute("DELETE FROM face_doubt")
    conn.executemany("INSERT OR REPLACE INTO face_doubt (face_id, score, candidate) VALUES (?, ?, ?)",
                     zip(face_ids.tolist(), np.round(score, 5).tolist(),
                         [None if c < 0 else c for c in candidate.tolist()]))
