"""Exact eps-neighbours of a few new faces among a million stored ones, without the full product.

A 64×N float32 product over 10^6 × 512 stored faces alone takes well over a second on two cores, so
``index_neighbours`` prunes, exactly (it finds the very pairs brute force finds):

- ``IdentityBounds``: each identity keeps a centre and a radius covering all of its faces, so a new
  face farther than radius + eps from the centre has no neighbour among them. One product against
  the centres (one row per identity) leaves the few identities whose faces are compared at all.
- faces with no identity (or none with bounds) are first compared on the leading dimensions
  (a quarter to three quarters of them, fewer for a smaller eps; in full for a large one): by
  Cauchy-Schwarz q·x <= q_head·x_head + |q_tail|·|x_tail|, so a pair is finished on the rest only
  when that bound reaches the eps threshold; for faces in general position (pairs far apart,
  energy spread over the dimensions) almost none does.

Bounds only need to *cover*: a face that joins an identity widens its radius, a face that leaves
changes nothing, so the service keeps them up to date face by face and rebuilds them now and then.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import scipy.sparse as sp

__all__ = ["IdentityBounds", "SearchCache", "index_neighbours", "sqnorms", "tailnorms"]

_CHUNK_BYTES = 64 << 20     # search temporaries (per query batch)
_PASS_BYTES = 16 << 20      # one-off passes over the whole matrix: small blocks, small peak
_REL = np.float32(1e-4)     # float32 slack, relative to the squared norms involved


def sqnorms(x: np.ndarray) -> np.ndarray:
    """Squared row norms, float32."""
    return np.einsum("ij,ij->i", x, x, dtype=np.float32)


#: where the first pass over faces with no identity may cut the dimensions, in eighths
_CUTS = (2, 3, 4, 5, 6)


def head_dims(dim: int, radius: float, scale: float) -> Optional[int]:
    """Leading dimensions for the first pass: the fewest whose tail bound (for vectors spread over
    all dimensions, |x_tail||q_tail| ~ (1 - k/d)|x||q|) stays clear of the threshold
    q·x >= (|x|²+|q|²-r²)/2 ~ (1 - r²/2s) s; None when none does (large eps: compare in full)."""
    room = 1 - radius * radius / (2 * scale) - 0.12
    for c, cut in enumerate(_CUTS):
        if 1 - cut / 8 <= room:
            return c
    return None


def tailnorms(x: np.ndarray) -> np.ndarray:
    """float32[N, len(_CUTS)]: each row's norm past each cut, rounded up to stay an upper bound."""
    d = x.shape[1]
    out = np.empty((len(x), len(_CUTS)), np.float32)
    step = max(1, _PASS_BYTES // (4 * max(1, d)))
    for s in range(0, len(x), step):
        sq = np.einsum("ij,ij->ij", x[s:s + step], x[s:s + step], dtype=np.float32)
        tail = np.cumsum(sq[:, ::-1], axis=1, dtype=np.float32)[:, ::-1]   # tail[:, k] = sum k..d
        out[s:s + step] = np.sqrt(tail[:, [c * d // 8 for c in _CUTS]])
    out *= np.float32(1 + 1e-4)
    out += np.float32(1e-6)
    return out


class IdentityBounds:
    """Per identity, a centre and a radius such that every face of it lies within the radius."""

    def __init__(self, dim: int, capacity: int = 0):
        self.dim = dim
        self.n = 0
        self.labels = np.empty(capacity, np.int64)
        self.centres = np.empty((capacity, dim), np.float32)
        self.csq = np.empty(capacity, np.float32)
        self.ctail = np.empty((capacity, len(_CUTS)), np.float32)   # tailnorms of the centres
        self.radius = np.empty(capacity, np.float32)
        self._slot = np.full(0, -1, np.int64)          # identity id -> slot, -1 = none

    def slots(self, identity: np.ndarray) -> np.ndarray:
        """Slot of each label, -1 for -1 and for identities without bounds."""
        identity = np.asarray(identity, np.int64)
        ok = (identity >= 0) & (identity < len(self._slot))
        out = np.full(len(identity), -1, np.int64)
        out[ok] = self._slot[identity[ok]]
        return out

    @classmethod
    def build(cls, vectors: np.ndarray, identity: np.ndarray) -> "IdentityBounds":
        """From scratch: each identity's mean face and its farthest face. One pass in chunks."""
        identity = np.asarray(identity, np.int64)
        rows = np.flatnonzero(identity >= 0)
        labels, inv = np.unique(identity[rows], return_inverse=True)
        b = cls(vectors.shape[1], len(labels))
        b._append(labels, np.zeros((len(labels), b.dim), np.float32), np.zeros(len(labels), np.float32))
        if not len(rows):
            return b
        order = np.argsort(inv, kind="stable")
        rows, inv = rows[order], inv[order]
        step = max(1, _PASS_BYTES // (4 * b.dim))
        for s in range(0, len(rows), step):     # sums: a sorted run of identities per chunk
            g, local = np.unique(inv[s:s + step], return_inverse=True)
            m = len(local)
            member = sp.csr_matrix((np.ones(m, np.float32), (local, np.arange(m))), shape=(len(g), m))
            b.centres[g] += member @ vectors[rows[s:s + step]]
        b.centres[: b.n] /= np.bincount(inv, minlength=b.n).astype(np.float32)[:, None]
        b.csq[: b.n] = sqnorms(b.centres[: b.n])
        b.ctail[: b.n] = tailnorms(b.centres[: b.n])
        for s in range(0, len(rows), step):     # radii
            g, starts = np.unique(inv[s:s + step], return_index=True)
            block = vectors[rows[s:s + step]]
            block -= b.centres[inv[s:s + step]]
            far = np.sqrt(sqnorms(block))
            b.radius[g] = np.maximum(b.radius[g], np.maximum.reduceat(far, starts))
        b.radius[: b.n] = b.radius[: b.n] * np.float32(1 + 1e-5) + np.float32(1e-6)
        return b

    def cover(self, vectors: np.ndarray, identity: np.ndarray) -> None:
        """Faces (rows of ``vectors``) now belong to ``identity``: widen radii, or add identities
        (centred on the mean of their faces here). Labels < 0 are ignored."""
        identity = np.asarray(identity, np.int64)
        keep = identity >= 0
        if not keep.any():
            return
        vectors, identity = np.asarray(vectors, np.float32)[keep], identity[keep]
        missing = np.unique(identity[self.slots(identity) < 0])
        if len(missing):
            inv = np.searchsorted(missing, identity)
            has = np.isin(identity, missing)
            sums = np.zeros((len(missing), self.dim), np.float32)
            np.add.at(sums, inv[has], vectors[has])
            sums /= np.bincount(inv[has], minlength=len(missing)).astype(np.float32)[:, None]
            self._append(missing, sums, np.zeros(len(missing), np.float32))
        slot = self.slots(identity)
        far = np.linalg.norm(vectors - self.centres[slot], axis=1) * np.float32(1 + 1e-5) + np.float32(1e-6)
        np.maximum.at(self.radius, slot, far)

    def _append(self, labels: np.ndarray, centres: np.ndarray, radius: np.ndarray) -> None:
        m = len(labels)
        if self.n + m > len(self.labels):
            cap = max(self.n + m, len(self.labels) + len(self.labels) // 4, 64)
            for name in ("labels", "csq", "radius", "ctail"):
                old = getattr(self, name)
                new = np.empty((cap,) + old.shape[1:], old.dtype); new[: self.n] = old[: self.n]
                setattr(self, name, new)
            c = np.empty((cap, self.dim), np.float32); c[: self.n] = self.centres[: self.n]
            self.centres = c
        sl = slice(self.n, self.n + m)
        self.labels[sl], self.centres[sl], self.radius[sl] = labels, centres, radius
        self.csq[sl] = sqnorms(self.centres[sl])
        self.ctail[sl] = tailnorms(self.centres[sl])
        top = int(labels.max()) + 1 if m else 0
        if top > len(self._slot):
            grown = np.full(max(top, 2 * len(self._slot)), -1, np.int64)
            grown[: len(self._slot)] = self._slot
            self._slot = grown
        self._slot[labels] = np.arange(self.n, self.n + m)
        self.n += m

    def candidates(self, queries: np.ndarray, q_sq: np.ndarray, radius: float) -> np.ndarray:
        """bool[n]: identities that may hold a face within ``radius`` of some query."""
        # keep c iff |q-c|² <= (R+eps)² + rel(|c|²+|q|²+1) for some q, i.e. iff
        #   max_q(q·c - q_term) >= need_c,  q_term = |q|²(1-rel)/2,
        #   need_c = |c|²(1-rel)/2 - (R+eps)²/2 - rel/2;
        # first with q·c <= head + |c_tail| max|q_tail| (as for faces, see index_neighbours)
        out = np.zeros(self.n, bool)
        if not self.n:
            return out
        cut = head_dims(self.dim, float(np.median(self.radius[: self.n])) + radius, float(q_sq.mean()))
        k = self.dim if cut is None else _CUTS[cut] * self.dim // 8
        q_head, q_tail = queries[:, :k], queries[:, k:]
        q_tn = np.float32(np.sqrt(sqnorms(q_tail).max(initial=0)) * (1 + 1e-5))
        q_term = q_sq * ((1 - _REL) / 2)
        step = max(1, _CHUNK_BYTES // (4 * max(1, len(queries))))
        for s in range(0, self.n, step):
            e = min(self.n, s + step)
            dot = self.centres[s:e, :k] @ q_head.T
            dot -= q_term
            reach = self.radius[s:e] + np.float32(radius)
            need = self.csq[s:e] * ((1 - _REL) / 2) - reach * reach / 2 - _REL / 2
            if cut is None:
                out[s:e] = dot.max(axis=1) >= need
                continue
            maybe = np.flatnonzero(dot.max(axis=1) + self.ctail[s:e, cut] * q_tn >= need)
            if len(maybe):
                full = dot[maybe] + self.centres[s + maybe, k:] @ q_tail.T
                out[s + maybe] = full.max(axis=1) >= need[maybe]
        return out


def _pairs_within(block: np.ndarray, b_sq: np.ndarray, queries: np.ndarray, q_sq: np.ndarray,
                  r2: np.float32, dot: Optional[np.ndarray] = None):
    """(query, block row, distance) of the pairs within sqrt(r2); ``dot`` if already computed."""
    if dot is None:
        dot = block @ queries.T
    d2 = b_sq[:, None] + q_sq[None, :] - 2 * dot
    bi, qi = np.nonzero(d2 <= r2)
    return qi, bi, np.sqrt(np.maximum(d2[bi, qi], 0))


def index_neighbours(vectors: np.ndarray, sq: np.ndarray, identity: np.ndarray,
                     queries: np.ndarray, radius: float, bounds: Optional[IdentityBounds] = None,
                     tails: Optional[np.ndarray] = None,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query row, stored row, distance) for every pair within ``radius``, as brute force
    would (``clustering.radius_neighbours``), pruning with ``bounds`` and ``tails`` (see the
    module doc). ``bounds`` must cover ``identity``; ``tails`` are ``tailnorms(vectors)``."""
    from facesortd.people.clustering import radius_neighbours
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if bounds is None or not len(vectors) or not len(queries):
        yield from radius_neighbours(vectors, queries, radius, sq)
        return
    q_sq = sqnorms(queries)
    r2 = np.float32(radius * radius)
    slot = bounds.slots(identity)
    # faces of identities whose bound some query reaches: compared in full
    reach = np.r_[bounds.candidates(queries, q_sq, radius), False]
    near = np.flatnonzero(reach[slot])      # slot -1 picks the trailing False
    step = max(1, _CHUNK_BYTES // (4 * max(queries.shape[1], len(queries))))
    for s in range(0, len(near), step):
        rows = near[s:s + step]
        qi, bi, d = _pairs_within(vectors[rows], sq[rows], queries, q_sq, r2)
        yield qi, rows[bi], d
    # faces without bounds: the leading dimensions first, the rest only where the bound allows
    loose = np.flatnonzero(slot < 0)
    cut = head_dims(vectors.shape[1], radius, float(q_sq.mean()))
    if cut is None:
        for s in range(0, len(loose), step):
            rows = loose[s:s + step]
            qi, bi, d = _pairs_within(vectors[rows], sq[rows], queries, q_sq, r2)
            yield qi, rows[bi], d
        return
    k = _CUTS[cut] * vectors.shape[1] // 8
    q_head, q_tail = queries[:, :k], queries[:, k:]
    q_tn = np.float32(np.sqrt(sqnorms(np.ascontiguousarray(q_tail)).max()) * (1 + 1e-5))
    # keep a row if for some q: head·q_head + |x_tail||q_tail| >= (|x|²+|q|²-r²)/2 - slack; with
    # |q_tail| <= q_tn and a = 1/2 - rel that is max_q(head·q_head - (a|q|² - r²/2 - rel))
    # >= a|x|² - |x_tail| q_tn (a little looser, still a bound: the pairs are checked exactly)
    half = np.float32(0.5) - _REL
    q_need = half * q_sq - r2 / 2 - _REL
    for s in range(0, len(loose), step):
        rows = loose[s:s + step]
        head = vectors[rows, :k] @ q_head.T
        b_sq = sq[rows]
        t = (tails[rows] if tails is not None else tailnorms(vectors[rows]))[:, cut]
        best = (head - q_need).max(axis=1)
        maybe = np.flatnonzero(best >= half * b_sq - t * q_tn)
        if len(maybe):
            hit = rows[maybe]
            dot = head[maybe] + vectors[hit, k:] @ q_tail.T
            qi, bi, d = _pairs_within(None, b_sq[maybe], queries, q_sq, r2, dot)
            yield qi, hit[bi], d


class SearchCache:
    """Row norms and identity bounds of the store's matrix, kept in step with it between searches.

    ``sync`` compares the face ids and labels with those of the last call: rows appended get their
    norms, faces whose label changed widen their identity's bound; any other change of the
    matrix (a face removed) rebuilds all, as does ``invalidate`` (after a recluster, to tighten).
    """

    def __init__(self) -> None:
        self._ids: Optional[np.ndarray] = None
        self._ident = np.zeros(0, np.int64)
        self.sq = np.zeros(0, np.float32)
        self.tails = np.zeros((0, len(_CUTS)), np.float32)
        self.bounds: Optional[IdentityBounds] = None

    def invalidate(self) -> None:
        self._ids = None

    def sync(self, ids: np.ndarray, vectors: np.ndarray, identity: np.ndarray) -> None:
        """Bring norms and bounds up to date with ``vectors`` (rows = ``ids``) and labels."""
        n, m = len(ids), 0 if self._ids is None else len(self._ids)
        prefix = (self._ids is not None and m <= n and self.bounds is not None
                  and self.bounds.dim == vectors.shape[1] and np.array_equal(self._ids, ids[:m]))
        if not prefix:
            self.sq, self.tails = sqnorms(vectors), tailnorms(vectors)
            self.bounds = IdentityBounds.build(vectors, identity)
        else:
            if n > m:
                self.sq = np.concatenate([self.sq, sqnorms(vectors[m:])])
                self.tails = np.concatenate([self.tails, tailnorms(vectors[m:])])
            rows = np.r_[np.flatnonzero(identity[:m] != self._ident), np.arange(m, n)]
            if len(rows):
                self.bounds.cover(vectors[rows], identity[rows])
        self._ids, self._ident = np.array(ids, np.int64), np.array(identity, np.int64)
