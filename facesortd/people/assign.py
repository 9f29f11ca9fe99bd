"""Incremental assignment: place a micro-batch of new faces at once, against the stored faces.

``cluster_index.index_neighbours`` finds its eps-neighbours among the stored faces (exact, pruned
with per-identity bounds instead of a full 1×N product per new face); then the very
algorithm of a full recluster (``clustering.cluster_labels`` + ``match_to_previous``) runs on the
*region* the batch touches: the new faces, their stored neighbours and every face of the
identities those neighbours belong to. So a new face within eps of a core face of an identity
joins it, ``min_samples`` unassigned faces within eps of each other become a new identity, a face
that bridges two people is split off again by the same check the recluster makes, and streaming
ends where a batch recluster would. When the region is too big for that (an identity of many
thousands of faces), only the new faces and unassigned neighbours are placed; stored faces keep
their identity until the next recluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from facesortd.people.clustering import (
    NO_CONSTRAINTS,
    ClusterParams,
    Constraints,
    Graph,
    ReclusterResult,
    build_graph,
    cluster_labels,
)
from facesortd.people.index import IdentityBounds, index_neighbours, sqnorms, tailnorms
from facesortd.people.recluster import _count_changes, match_to_previous, pins_of

__all__ = ["FaceIndex", "AssignResult", "assign_incremental"]


@dataclass(frozen=True)
class FaceIndex:
    """The stored faces as the store holds them in memory, one row per face."""

    ids: np.ndarray         # int64[N] face ids
    vectors: np.ndarray     # float32[N, d], distances are taken on them as given
    identity: np.ndarray    # int64[N] identity id, -1 = none
    image_ids: np.ndarray   # int64[N]
    sqnorms: Optional[np.ndarray] = None   # float32[N] squared row norms, cached (saves a pass)
    tails: Optional[np.ndarray] = None     # float32[N, cuts] ``cluster_index.tailnorms``
    bounds: Optional[IdentityBounds] = None  # covering ``identity``; None: brute-force search

    @classmethod
    def from_arrays(cls, ids, vectors, identity, image_ids) -> "FaceIndex":
        """An index with its norms and identity bounds computed here (one pass over vectors)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        identity = np.asarray(identity, np.int64)
        return cls(np.asarray(ids, np.int64), vectors, identity, np.asarray(image_ids, np.int64),
                   sqnorms(vectors), tailnorms(vectors), IdentityBounds.build(vectors, identity))

    @classmethod
    def empty(cls, dim: int) -> "FaceIndex":
        z = np.zeros(0, np.int64)
        return cls(z, np.zeros((0, dim), np.float32), z, z, np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def apply(self, result: "AssignResult", new_vectors: np.ndarray, new_image_ids: np.ndarray,
              next_identity: int) -> tuple["FaceIndex", dict[int, int]]:
        """The index after ``result`` (what the store does in its transaction): new faces appended,
        moved faces relabelled, provisional labels numbered from ``next_identity``. Returns the
        new index and {provisional label: identity id}. Copies the matrix: for tests and benches;
        a store keeps a growable buffer instead."""
        new_of = {int(p): next_identity + k for k, p in enumerate(sorted(
            set(result.identity[result.identity <= -2].tolist()), reverse=True))}
        label = np.array([new_of.get(int(x), int(x)) for x in result.identity], np.int64)
        n_new = len(new_vectors)
        identity = self.identity.copy()
        pos = {int(f): r for r, f in enumerate(self.ids)} if len(result.ids) > n_new else {}
        for f, lab in zip(result.ids[n_new:], label[n_new:]):
            identity[pos[int(f)]] = lab
        return FaceIndex.from_arrays(
            np.concatenate([self.ids, result.ids[:n_new]]),
            np.concatenate([self.vectors, np.asarray(new_vectors, np.float32)]),
            np.concatenate([identity, label[:n_new]]),
            np.concatenate([self.image_ids, np.asarray(new_image_ids, np.int64)])), new_of


@dataclass
class AssignResult(ReclusterResult):
    """``ids``/``identity``: the new faces first (in the order given), then every stored face whose
    identity changed. ``edges``: eps-edges between a new face and any face (by face id), for the
    store's neighbour graph."""

    edges: Graph = field(default_factory=Graph.empty)
    limited: bool = False   # region too big: stored faces were left as they were


def assign_incremental(index: FaceIndex, new_ids: np.ndarray, new_vectors: np.ndarray,
                       new_image_ids: np.ndarray, params: ClusterParams,
                       constraints: Constraints = NO_CONSTRAINTS,
                       max_region: Optional[int] = None) -> AssignResult:
    """Place new faces; see the module doc. Never changes ``index``."""
    new_ids = np.asarray(new_ids, np.int64)
    q = np.ascontiguousarray(new_vectors, dtype=np.float32)
    new_img = np.asarray(new_image_ids, np.int64)
    n_new = len(new_ids)
    max_region = max_region or params.max_component
    hits_q, hits_r, hits_d = [], [], []
    if len(index):
        sq = index.sqnorms if index.sqnorms is not None else sqnorms(index.vectors)
        for qi, r, d in index_neighbours(index.vectors, sq, index.identity, q, params.eps,
                                         index.bounds, index.tails):
            hits_q.append(qi); hits_r.append(r); hits_d.append(d)
    hq = np.concatenate(hits_q) if hits_q else np.zeros(0, np.int64)
    hr = np.concatenate(hits_r) if hits_r else np.zeros(0, np.int64)
    hd = np.concatenate(hits_d).astype(np.float32) if hits_d else np.zeros(0, np.float32)
    inner = build_graph(q, params.eps)
    edges = Graph(np.concatenate([new_ids[hq], new_ids[inner.i]]),
                  np.concatenate([index.ids[hr], new_ids[inner.j]]),
                  np.concatenate([hd, inner.d]))

    neighbours = np.unique(hr)
    touched = np.unique(index.identity[neighbours])
    touched = touched[touched >= 0]
    members = np.flatnonzero(np.isin(index.identity, touched)) if len(touched) else np.zeros(0, np.int64)
    region = np.union1d(neighbours, members)
    limited = len(region) + n_new > max_region
    if limited:
        region = neighbours
    ids = np.concatenate([new_ids, index.ids[region]])
    matrix = np.concatenate([q, index.vectors[region]])
    img = np.concatenate([new_img, index.image_ids[region]])
    prev = np.concatenate([np.full(n_new, -1, np.int64), index.identity[region]])
    pin = pins_of(ids, constraints)
    clusters = cluster_labels(matrix, img, params, graph=build_graph(matrix, params.eps), pin=pin)
    res = match_to_previous(clusters, prev, matrix, ids, constraints)
    label = res.identity
    if limited:
        # only the new faces and unassigned neighbours may change: stored identities stay whole
        label = np.where(prev >= 0, prev, label)
        res = ReclusterResult(ids=ids, identity=label, suggestions=res.suggestions)
        res.created = len(np.unique(label[label <= -2]))
        _count_changes(res, prev, label)
    changed = np.r_[np.ones(n_new, bool), label[n_new:] != prev[n_new:]]
    return AssignResult(ids=ids[changed], identity=label[changed], created=res.created,
                        merged=res.merged, split=res.split, dissolved=res.dissolved,
                        faces_moved=res.faces_moved, suggestions=res.suggestions,
                        edges=edges, limited=limited)
