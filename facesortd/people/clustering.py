"""Faces to people: DBSCAN over an eps-neighbour graph, split where it chained, matched to old ids.

Pure functions over numpy arrays; the store and the daemon own persistence. Public API:

- ``ClusterParams``: ``eps`` and ``min_samples`` (the config) plus the split check's
  ``max_link`` / ``min_gap`` (which belong to the embedder: ``ClusterParams.for_embedder``) and
  its density-aware shares of them.
- ``Constraints``: what a person decided (pinned faces, "not this person", named identities).
- ``recluster(ids, matrix, image_ids, params, constraints, previous, graph=None)`` (in
  ``people.recluster``): cluster every face, keep identity ids stable, return a ``ReclusterResult``.
- ``assign_incremental(index, new_ids, new_vectors, new_image_ids, params, constraints)`` (in
  ``people.assign``): place a micro-batch against a ``FaceIndex``, same algorithm on the region
  the batch touches, return an ``AssignResult`` with the new eps-edges for the store's graph.
- ``radius_neighbours(matrix, queries, radius)``: chunked float32 products, bounded memory.

Labels everywhere: ``>= 0`` an existing identity id, ``-1`` unassigned, ``<= -2`` a provisional new
identity (``-2`` is the first) that the caller turns into a row.

The algorithm (issue 3 §3). Plain DBSCAN chains people through in-between faces, so:
1. the eps-graph drops edges between faces of the same photo and between faces pinned to two
   different identities; DBSCAN core points and components run on what is left;
2. every component is split top-down along its average-linkage dendrogram wherever the two
   halves (of ``a`` and ``b`` faces) are on average more than ``max_link`` apart, or farther apart
   than their own mean spread by more than ``min_gap`` (two tight groups side by side are two
   people), or a half would hold two faces of one photo; and, the density-aware part (issue 12),
   wherever the group does not stand clear of its surroundings. Its clearance is the mean
   distance from its faces to their ``isolation`` nearest faces outside it, less the mean
   distance between its faces. Below ``margin * min_gap`` the group is split; below ``min_gap``
   (a crowd) its halves must also be within ``crowd * max_link * (1 - shrink / (a * b))``: a
   mean over few distances says little, and where a model puts many people close together (dlib
   and East Asian faces) an absolute distance lumps them. On lfw_dev two lone faces 0.32-0.34
   apart are one person less than half the time, a face 0.38-0.40 from ten others three times in
   four. A group that failed is cut in two, and its parts are judged against the faces outside
   that group, not against each other: the halves of one broad person are each other's nearest
   outsiders, and would crumble it. Parts smaller than ``min_samples`` stay unassigned;
3. clusters are matched to previous identities (named first, then oldest), each taking the
   cluster holding most of its faces (pins weigh most); a cluster that would join a named
   identity with another identity is cut back along the old identities and yields a
   ``MergeSuggestion`` instead; pins are then forced and "not this person" faces unassigned.
The incremental path runs the same steps on the faces the batch touches, so streaming ≈ batch.

Step 1 is hand-written (``_dbscan_components``, ``_components``) and not scikit-learn's DBSCAN, so
scikit-learn is not a runtime dependency (issue 13, item 8). ``DBSCAN(metric="precomputed")`` on
the same eps-graph as a CSR matrix (each row sorted by distance, so it does not sort row by row
itself) gives identical labels on lfw_dev and the synthetic bench once its border rule (a border
face joins the first cluster that reaches it) is replaced by this one (the nearest core face).
But it holds each face's neighbours as a separate numpy array and copies the graph twice. At a
million faces (7.3M edges) the step took 10-14 s and 0.8 GB against about 1 s and 71 MB. In
``facesortd bench cluster``, run back to back twice on 2 shared cores, a full recluster of 1M faces
took 42-51 s against 25-37 s, and the peak grew from 2.32 GB to 3.25 GB, over the 2.5 GB target.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping, Optional

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist, squareform

__all__ = [
    "ClusterParams", "Constraints", "MergeSuggestion", "ReclusterResult", "Graph",
    "TUNED_EPS", "radius_neighbours", "build_graph", "cluster_labels", "NEW_LABEL_BASE",
    "provisional", "NO_CONSTRAINTS",
]

NEW_LABEL_BASE = -2
#: ``eps: auto`` per embedder vector kind, tuned with tools/tune_clustering.py on shared/data.
TUNED_EPS = {"dlib": 0.60, "dlib-normalised": 0.43}
_CHUNK_BYTES = 64 << 20
#: ``max_link`` as a share of the embedder's tuned eps (0.45 for dlib's 0.43): the most a group
#: standing clear of its surroundings may spread; in a crowd the isolation check is tighter
LINK_OF_EPS = 1.05


def provisional(k: int) -> int:
    """The label of the k-th (0-based) new identity of a result."""
    return NEW_LABEL_BASE - k


@dataclass(frozen=True)
class ClusterParams:
    eps: float
    min_samples: int = 2
    max_link: Optional[float] = None   # split a group where halves are this far apart on average
    min_gap: Optional[float] = None    # ... or this much farther apart than their own spread
    max_component: int = 2500          # larger components are first re-cut with a tighter eps
    # the density-aware part of the split check (module doc, step 2); 0 isolation turns it off
    isolation: int = 2                 # outsiders looked at per face
    margin: float = 0.4                # split a group standing clear by less than margin * gap
    crowd: float = 0.91                # below gap, halves must be within crowd * link
    shrink: float = 0.2                # ... times (1 - shrink / (a * b)) for a and b faces
    far: float = 1.1                   # times link: the distance of an outsider the graph lacks

    def __post_init__(self) -> None:
        if not self.eps > 0 or self.min_samples < 1:
            raise ValueError("eps must be > 0 and min_samples >= 1")
        if self.isolation < 0 or not 0 <= self.shrink < 1:
            raise ValueError("isolation must be >= 0 and shrink in [0, 1)")

    @property
    def link(self) -> float:
        return self.max_link if self.max_link is not None else self.eps

    @property
    def gap(self) -> float:
        return self.min_gap if self.min_gap is not None else self.link / 6

    def crowd_link(self, a, b):
        """How far apart, on average, halves of ``a`` and ``b`` faces may be in a crowd: less
        than ``link``, and less again the fewer distances the mean is taken over."""
        return self.crowd * self.link * (1 - self.shrink / (a * b))

    @classmethod
    def for_embedder(cls, default_eps: float, eps: "float | str" = "auto",
                     min_samples: int = 2) -> "ClusterParams":
        """The config's eps/min_samples; the split check stays at the embedder's tuned distance,
        so a user's eps moves how far DBSCAN reaches, not how far apart one person may be."""
        chosen = default_eps if eps == "auto" else float(eps)
        return cls(eps=chosen, min_samples=min_samples, max_link=LINK_OF_EPS * default_eps,
                   min_gap=default_eps / 6)


@dataclass(frozen=True)
class Constraints:
    """What a person decided; it always wins over the clustering."""

    pinned: Mapping[int, int] = field(default_factory=dict)          # face id -> identity id
    cannot_link: frozenset = frozenset()                              # {(face id, identity id)}
    named: frozenset = frozenset()                                    # identity ids with a name


#: No decisions at all (the default of the functions that take constraints).
NO_CONSTRAINTS = Constraints()


@dataclass(frozen=True)
class MergeSuggestion:
    a: int            # identity ids, a < b
    b: int
    distance: float   # between the two identities' mean vectors


@dataclass
class ReclusterResult:
    ids: np.ndarray                 # face ids, as given
    identity: np.ndarray            # label per face (>=0 id, -1 none, <=-2 provisional new)
    created: int = 0
    merged: int = 0
    split: int = 0
    dissolved: int = 0              # identities left with no face at all (all unassigned)
    faces_moved: int = 0            # previously known faces whose label changed
    suggestions: list[MergeSuggestion] = field(default_factory=list)

    def new_identities(self) -> dict[int, np.ndarray]:
        """Provisional label -> the face ids it holds."""
        return {int(k): self.ids[self.identity == k] for k in np.unique(self.identity[self.identity <= NEW_LABEL_BASE])}

    def counts(self) -> dict[str, int]:
        return {"created": self.created, "merged": self.merged, "split": self.split,
                "dissolved": self.dissolved, "faces_moved": self.faces_moved,
                "suggestions": len(self.suggestions)}


@dataclass(frozen=True)
class Graph:
    """Undirected eps-neighbour edges by position (each pair once, i < j), with distances."""

    i: np.ndarray   # int32 (int64 past 2^31 rows)
    j: np.ndarray   # same
    d: np.ndarray   # float32

    @staticmethod
    def empty() -> "Graph":
        return Graph(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


# ---------------------------------------------------------------------------- neighbour search

def _sqnorms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float32)


def radius_neighbours(matrix: np.ndarray, queries: np.ndarray, radius: float,
                      sqnorms: Optional[np.ndarray] = None,
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query row, matrix row, distance) for every pair within ``radius``, chunk by chunk.

    float32 products over row blocks of ``matrix``; memory stays at one block × len(queries).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    q_sq = _sqnorms(queries)
    r2 = np.float32(radius * radius)
    rows = max(1, _CHUNK_BYTES // (4 * max(1, len(queries))))
    for start in range(0, len(matrix), rows):
        block = matrix[start:start + rows]
        b_sq = sqnorms[start:start + rows] if sqnorms is not None else _sqnorms(block)
        if not len(block):
            break
        dot = block @ queries.T                      # [rows, Q]
        # |b-q|² <= r² needs b·q >= (|b|²+|q|²-r²)/2 >= (min|b|²+|q|²-r²)/2: one cheap
        # comparison finds the few candidates, which are then checked exactly
        floor = (b_sq.min() + q_sq - r2) / 2
        bi, qi = np.nonzero(dot >= floor[None, :])
        if len(bi):
            d2 = b_sq[bi] + q_sq[qi] - 2 * dot[bi, qi]
            ok = d2 <= r2
            yield qi[ok], bi[ok] + start, np.sqrt(np.maximum(d2[ok], 0))


def build_graph(matrix: np.ndarray, radius: float, block: int = 4096) -> Graph:
    """Every pair within ``radius`` by brute force (N²·d work; the store normally keeps the graph
    and extends it one batch at a time instead)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    sq = _sqnorms(matrix)
    parts_i, parts_j, parts_d = [], [], []
    for start in range(0, len(matrix), block):
        q = matrix[start:start + block]
        # only rows >= start: each pair once
        for qi, bi, d in radius_neighbours(matrix[start:], q, radius, sq[start:]):
            bi = bi + start
            qi = qi + start
            keep = bi > qi
            parts_i.append(qi[keep]); parts_j.append(bi[keep]); parts_d.append(d[keep].astype(np.float32))
    if not parts_i:
        return Graph.empty()
    index_type = np.int32 if len(matrix) < 2**31 else np.int64
    return Graph(np.concatenate(parts_i).astype(index_type), np.concatenate(parts_j).astype(index_type),
                 np.concatenate(parts_d))


# ----------------------------------------------------------------------------- the clustering

def cluster_labels(matrix: np.ndarray, image_ids: np.ndarray, params: ClusterParams,
                   graph: Optional[Graph] = None, pin: Optional[np.ndarray] = None) -> np.ndarray:
    """Cluster index per row (0..k-1) or -1, ignoring previous identities.

    ``pin`` (identity per row or -1) keeps faces pinned to different identities apart.
    """
    n = len(matrix)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    pin = np.full(n, -1, np.int64) if pin is None else np.asarray(pin, np.int64)
    if graph is None:
        graph = build_graph(matrix, params.eps)
    gi, gj, gd = _usable_edges(graph, image_ids, pin, params.eps)
    labels = np.full(n, -1, np.int64)
    next_label = 0
    components = _dbscan_components(n, gi, gj, gd, params.min_samples)
    halo = _Halo(n, gi, gj, gd, params.isolation, params.far * params.link) if params.isolation else None
    if halo is not None:
        halo.update(components)
    for members in components:
        for part in _split_component(matrix, image_ids, pin, members, params, gi, gj, gd, halo):
            if len(part) >= params.min_samples:
                labels[part] = next_label
                next_label += 1
    return labels


def _components(n: int, gi: np.ndarray, gj: np.ndarray, use: Optional[np.ndarray] = None,
                chunk: int = 1 << 20) -> np.ndarray:
    """Connected components of the edges (gi[use], gj[use]): each row's label is the smallest row
    of its component. Union by hooking roots to the smaller root, then path halving to the root,
    repeated until no edge joins two roots; edge chunks keep it to a few MB where scipy's
    ``connected_components`` copies the graph to float64 CSR and its transpose."""
    parent = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    while True:
        hooked = False
        for s in range(0, len(gi), chunk):
            a, b = parent[gi[s:s + chunk]], parent[gj[s:s + chunk]]
            differ = a != b
            if use is not None:
                differ &= use[s:s + chunk]
            if differ.any():
                a, b = a[differ], b[differ]
                np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
                hooked = True
        while True:                       # every row straight to its root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
        if not hooked:
            return parent


def _usable_edges(graph: Graph, image_ids: np.ndarray, pin: np.ndarray, eps: float):
    """The graph's edges within eps, minus those within one photo or between two pins; one
    selection (no copy when nothing is dropped), rows as int32 where they fit (half the memory
    at millions of edges)."""
    gi, gj, gd = graph.i, graph.j, graph.d
    keep = gd <= eps
    keep &= gi != gj
    for s in range(0, len(gi), 1 << 20):       # chunked: no full-length int64 temporaries
        a, b = gi[s:s + (1 << 20)], gj[s:s + (1 << 20)]
        k = keep[s:s + (1 << 20)]
        k &= image_ids[a] != image_ids[b]
        pa, pb = pin[a], pin[b]
        k &= ~((pa >= 0) & (pb >= 0) & (pa != pb))
    index_type = np.int32 if len(image_ids) < 2**31 else np.int64
    if keep.all():
        return gi.astype(index_type, copy=False), gj.astype(index_type, copy=False), gd
    return gi[keep].astype(index_type, copy=False), gj[keep].astype(index_type, copy=False), gd[keep]


def _dbscan_components(n: int, gi: np.ndarray, gj: np.ndarray, gd: np.ndarray,
                       min_samples: int) -> list[np.ndarray]:
    """DBSCAN's clusters as arrays of rows: components of core points plus their border points."""
    degree = np.bincount(gi, minlength=n) + np.bincount(gj, minlength=n)
    core = degree + 1 >= min_samples
    cc = core[gi] & core[gj]
    comp = np.where(core, _components(n, gi, gj, None if cc.all() else cc), -1)
    # border point: non-core with a core neighbour -> that neighbour's component (nearest wins)
    s1 = ~core[gi] & core[gj]        # gi is the border point
    s2 = core[gi] & ~core[gj]        # gj is
    if s1.any() or s2.any():
        bi = np.concatenate([gi[s1], gj[s2]]); bj = np.concatenate([gj[s1], gi[s2]])
        bd = np.concatenate([gd[s1], gd[s2]])
        order = np.lexsort((bd, bi))
        b, c = bi[order], bj[order]
        first = np.r_[True, b[1:] != b[:-1]]
        comp[b[first]] = comp[c[first]]
    rows = np.flatnonzero(comp >= 0)
    if not len(rows):
        return []
    order = rows[np.argsort(comp[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    return [g for g in np.split(order, bounds) if len(g) >= 2]


def _split_component(matrix, image_ids, pin, members, params, gi, gj, gd, halo=None) -> list[np.ndarray]:
    if len(members) <= params.max_component:
        return _linkage_split(matrix[members], image_ids[members], pin[members], members, params,
                              None if halo is None else halo.near[members])
    # Too big for an n² dendrogram (a chain through a big library): re-run DBSCAN inside it with a
    # tighter eps until the parts fit; the faces that drop out stay unassigned until they fit.
    inside = np.zeros(len(matrix), bool); inside[members] = True
    tighter = params.eps * 0.9
    sel = inside[gi] & inside[gj] & (gd <= tighter)
    sub = replace(params, eps=tighter, max_link=params.link, min_gap=params.gap)
    parts = _dbscan_components(len(matrix), gi[sel], gj[sel], gd[sel], params.min_samples)
    if halo is not None:
        halo.update(parts, members)
    out = []
    for part in parts:
        out.extend(_split_component(matrix, image_ids, pin, part, sub, gi[sel], gj[sel], gd[sel], halo))
    return out


class _Halo:
    """Each face's nearest graph neighbours outside its part (its component, or the piece of a
    re-cut component it fell in): the outsiders the isolation check cannot see in the part's own
    distances. ``near``: float32 [n, k], nearest first, ``far`` where there are fewer than k."""

    def __init__(self, n: int, gi: np.ndarray, gj: np.ndarray, gd: np.ndarray, k: int, far: float):
        self.gi, self.gj, self.gd, self.far = gi, gj, gd, np.float32(far)
        self.near = np.full((n, k), self.far, np.float32)

    def update(self, parts: list[np.ndarray], rows: Optional[np.ndarray] = None) -> None:
        """Recompute ``near`` for the faces of ``parts``, which cover ``rows`` (default: every
        face) or part of them: every edge from a face of a part to a face of another part or of
        none counts."""
        n, k = self.near.shape
        label = np.full(n, -1, np.int32)
        for p, part in enumerate(parts):
            label[part] = p
        inside = None
        if rows is not None:
            inside = np.zeros(n, bool); inside[rows] = True
        found_r, found_d = [], []
        step = 1 << 20
        for s in range(0, len(self.gi), step):
            a, b, d = self.gi[s:s + step], self.gj[s:s + step], self.gd[s:s + step]
            la, lb = label[a], label[b]
            cross = la != lb
            if inside is not None:
                cross &= inside[a] | inside[b]
            for r, lr in ((a, la), (b, lb)):
                m = cross & (lr >= 0)
                found_r.append(r[m]); found_d.append(d[m])
        self.near[label >= 0] = self.far
        r = np.concatenate(found_r) if found_r else np.zeros(0, np.int64)
        d = np.concatenate(found_d) if found_d else np.zeros(0, np.float32)
        if not len(r):
            return
        order = np.lexsort((d, r))
        r, d = r[order], d[order]
        start = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        rank = np.arange(len(r)) - np.repeat(start, np.diff(np.r_[start, len(r)]))
        keep = rank < k
        self.near[r[keep], rank[keep]] = np.minimum(d[keep], self.far)


def _linkage_split(x: np.ndarray, img: np.ndarray, pin: np.ndarray, members: np.ndarray,
                   params: ClusterParams, halo: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """Cut one component top-down along its average-linkage dendrogram (see the module doc)."""
    n = len(x)
    if n < 2:
        return [members]
    d = pdist(np.asarray(x, np.float64))
    # faces of one photo, or pinned to two identities, must end apart: push them apart here and
    # enforce it exactly in the cut below
    ii, jj = np.triu_indices(n, 1)
    conflict = (img[ii] == img[jj]) | ((pin[ii] >= 0) & (pin[jj] >= 0) & (pin[ii] != pin[jj]))
    if conflict.any():
        d[conflict] = max(2.0 * params.link, float(d.max()))
    z = linkage(d, "average")
    far = params.far * params.link
    square = None       # the component's distances, capped at far: made when first needed
    size = np.ones(2 * n - 1); wsum = np.zeros(2 * n - 1); pairs = np.zeros(2 * n - 1)
    left = np.empty(n - 1, np.int64); right = np.empty(n - 1, np.int64); height = z[:, 2]
    for k, (a, b) in enumerate(z[:, :2].astype(np.int64)):
        node = n + k
        left[k], right[k] = a, b
        size[node] = size[a] + size[b]
        pairs[node] = pairs[a] + pairs[b] + size[a] * size[b]
        wsum[node] = wsum[a] + wsum[b] + height[k] * size[a] * size[b]
    # leaf order: each node's leaves are one contiguous run of it
    lo = np.zeros(2 * n - 1, np.int64)
    order = np.empty(n, np.int64)
    stack = [2 * n - 2]
    while stack:
        node = stack.pop()
        if node < n:
            order[lo[node]] = node
            continue
        a, b = left[node - n], right[node - n]
        lo[a] = lo[node]; lo[b] = lo[node] + int(size[a])
        stack += [a, b]
    out = []
    stack = [(2 * n - 2, None)]
    while stack:
        node, context = stack.pop()
        leaves = order[lo[node]:lo[node] + int(size[node])]
        if node < n:
            out.append(members[leaves]); continue
        k = node - n
        a, b = left[k], right[k]
        cut = height[k] > params.link
        if not cut and min(size[a], size[b]) >= 2:
            spread = (wsum[a] + wsum[b]) / (pairs[a] + pairs[b])
            cut = height[k] - spread > params.gap
        if not cut:
            pins = pin[leaves]
            cut = len(np.unique(img[leaves])) < len(leaves) or len(np.unique(pins[pins >= 0])) > 1
        if not cut and params.isolation:
            # how far the group stands clear of its surroundings: the mean distance from its faces
            # to their nearest faces outside it, less the mean distance between its faces. Once
            # a group fails, its parts are judged against the faces outside that group
            # (``context``), not against each other (the halves of a broad person would be).
            around = leaves if context is None else context
            if square is None and len(around) < n:
                square = squareform(np.minimum(d, far).astype(np.float32))
                np.fill_diagonal(square, np.inf)
            outside = _outside(square if len(around) < n else None, halo, leaves, around,
                               params.isolation, far)
            clear = outside - wsum[node] / pairs[node]
            if clear < params.margin * params.gap:
                cut = True
                if context is None:
                    context = leaves
            elif clear < params.gap and height[k] > params.crowd_link(size[a], size[b]):
                cut = True
        if cut:
            stack += [(a, context), (b, context)]
        else:
            out.append(members[leaves])
    return out


def _outside(square: Optional[np.ndarray], halo: Optional[np.ndarray], rows: np.ndarray,
             around: np.ndarray, k: int, far: float) -> float:
    """Mean, over ``rows``, of the mean distance to their ``k`` nearest faces not in ``around``:
    faces of the component (``square``, capped at ``far``; None when ``around`` is all of it)
    or beyond it (``halo``); ``far`` for each one missing."""
    parts = []
    if square is not None:
        keep = np.ones(len(square), bool); keep[around] = False
        parts.append(square[np.ix_(rows, np.flatnonzero(keep))])
    if halo is not None:
        parts.append(halo[rows])
    d = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0] if parts else np.zeros((len(rows), 0))
    if d.shape[1] > k:
        d = np.partition(d, k - 1, axis=1)[:, :k]
    total = float(d.sum(dtype=np.float64)) + (k - d.shape[1]) * len(rows) * far
    return total / (k * len(rows))
