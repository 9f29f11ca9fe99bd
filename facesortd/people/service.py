"""The identity service: keeps every face's person up to date as faces arrive, inside the daemon.

The pipeline hands each stored micro-batch of face ids to ``IdentityService.submit``; the
service's own thread places them at once (``cluster_assign.assign_incremental`` against the
store's in-memory matrix), persists the new eps-edges in ``face_edges`` and applies the result in
one transaction. A full recluster (``cluster_recluster.recluster`` over the stored graph) runs
every ``clustering.recluster_interval_s``, after ``recluster_after_faces`` new faces, and on
request (``facesortd recluster``, SIGUSR1, the end of ``run --once``).

What a person decided (``corrections``) always wins: pins, "not this person" and names are read
as ``Constraints`` before each step, and a result is only written if no correction landed while it
was being computed (the ``history`` table is the marker); otherwise it is recomputed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable, Optional

import numpy as np

from facesortd.people.assign import FaceIndex, assign_incremental
from facesortd.people.clustering import ClusterParams, Graph, ReclusterResult, build_graph, radius_neighbours
from facesortd.people.doubt import doubt, write_doubt
from facesortd.people.index import SearchCache
from facesortd.people.recluster import recluster
from facesortd.people.storage import (  # noqa: F401 (history_marker, load_constraints: public)
    history_marker,
    load_constraints,
    load_pinned_ids,
    meta_get,
    meta_set,
    read_graph,
    record_merges,
    record_suggestion,
    rows_of,
    to_live,
    write_edges,
)
from facesortd.store.database import Store

__all__ = ["IdentityService", "service_for", "load_constraints", "history_marker"]

log = logging.getLogger("facesortd.identities")

_STOP = object()
_RECLUSTER = object()
_EDGE_CHUNK = 50_000


class IdentityService:
    """Incremental assignment on its own thread, scheduled reclusters, results applied atomically.

    Without ``start()`` it is a plain object: ``assign(face_ids)`` and ``recluster()`` run on the
    caller's thread (the CLI's ``recluster``, tests, ``eval``).
    """

    def __init__(self, store: Store, params: ClusterParams, recluster_interval_s: float = 0,
                 recluster_after_faces: int = 0,
                 on_changed: Optional[Callable[[], None]] = None, poll_s: float = 1.0):
        self.store = store
        self.params = params
        self.recluster_interval_s = recluster_interval_s
        self.recluster_after_faces = recluster_after_faces
        self.on_changed = on_changed or (lambda: None)
        self.poll_s = poll_s
        self._queue: "queue.Queue[object]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._work = threading.RLock()          # one assignment or recluster at a time
        self._marker: Optional[tuple[int, int]] = None
        # the faces the service knows, sorted by id: image and identity (-1 = none)
        self._fid = np.zeros(0, np.int64)
        self._fimg = np.zeros(0, np.int64)
        self._fident = np.zeros(0, np.int64)
        self._search = SearchCache()            # norms and identity bounds of the store's rows
        self._since_recluster = 0
        self._last_recluster = time.monotonic()
        self.last_counts: Optional[dict] = None

    # ---- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Catch up on faces stored but never assigned (a crash), then serve the queue."""
        self._ensure_loaded()
        with self.store.read() as conn:
            upto = meta_get(conn, "graph_upto")
            has_faces = conn.execute("SELECT 1 FROM faces WHERE rejected = 0 LIMIT 1").fetchone()
            if upto is not None:
                missed = [r[0] for r in conn.execute(
                    "SELECT id FROM faces WHERE id > ? AND rejected = 0 ORDER BY id", (int(upto),))]
        if upto is None and has_faces:
            self._queue.put(_RECLUSTER)
        elif upto is not None and missed:
            self._queue.put(missed)
        self._thread = threading.Thread(target=self._loop, name="identities", daemon=True)
        self._thread.start()

    def threads(self) -> list[threading.Thread]:
        """The identity thread, once started (for the supervisor's health check)."""
        return [self._thread] if self._thread is not None else []

    def stop(self, timeout: float = 120.0) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the identity thread did not stop within %.0f s", timeout)
        self._thread = None

    def submit(self, face_ids: Iterable[int]) -> None:
        """New faces are in the store (called on the model thread: returns at once)."""
        ids = [int(i) for i in face_ids]
        if ids:
            self._queue.put(ids)

    def request_recluster(self) -> None:
        self._queue.put(_RECLUSTER)

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before this call has been handled."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                item = None
            batch: list[int] = []
            wake: list[threading.Event] = []
            want_recluster = stopping = False
            while item is not None:   # take everything queued: one bigger batch is cheaper
                if item is _STOP:
                    stopping = True
                elif item is _RECLUSTER:
                    want_recluster = True
                elif isinstance(item, threading.Event):
                    wake.append(item)
                else:
                    batch.extend(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                if self._corrections_changed():
                    self.on_changed()
                if batch:
                    self.assign(batch)
                due = (self.recluster_after_faces and self._since_recluster >= self.recluster_after_faces) \
                    or (self.recluster_interval_s and self._since_recluster
                        and time.monotonic() - self._last_recluster >= self.recluster_interval_s)
                if want_recluster or due:
                    self.recluster(reason="requested" if want_recluster else "scheduled")
            except Exception:
                log.exception("identity assignment failed; the next recluster will place these faces")
            for event in wake:
                event.set()
            if stopping:
                return

    # ---- the cache of face labels -------------------------------------------------------------

    def _corrections_changed(self) -> bool:
        with self.store.read() as conn:
            marker = history_marker(conn)
        if marker == self._marker:
            return False
        with self._work:
            self._reload()
        return True

    def _reload(self) -> None:
        """Read every face's image and identity (after a correction, or at the first use)."""
        with self.store.read() as conn:
            self._marker = history_marker(conn)
            rows = conn.execute("SELECT id, image_id, COALESCE(identity_id, -1) FROM faces "
                                "WHERE rejected = 0 ORDER BY id").fetchall()
            upto = meta_get(conn, "graph_upto")
        arr = np.array(rows, np.int64).reshape(-1, 3)
        old = self._fid
        self._fid, self._fimg, self._fident = arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()
        if len(old) and upto is not None:
            # faces that came back (an undone reject) missed the edges of faces added meanwhile
            back = np.setdiff1d(self._fid[self._fid <= int(upto)], old)
            if len(back):
                self._add_edges(back)

    def _ensure_loaded(self) -> None:
        """Read the labels at the first use, and again when a correction landed since."""
        if self._marker is not None:
            with self.store.read() as conn:
                if history_marker(conn) != self._marker:
                    self._reload()
            return
        if self._marker is None:
            with self.store.transaction() as conn:
                # a new store: the (empty) graph is complete, and grows with each assignment
                if meta_get(conn, "graph_upto") is None and \
                        conn.execute("SELECT 1 FROM faces LIMIT 1").fetchone() is None:
                    meta_set(conn, "graph_upto", 0)
                    meta_set(conn, "graph_radius", self.params.eps)
            self._reload()

    def _assign_missed(self) -> None:
        """Place faces stored after the graph's last face (still queued, or never assigned), so
        the recluster can use the stored graph instead of rebuilding it."""
        with self.store.read() as conn:
            upto = meta_get(conn, "graph_upto")
            radius = meta_get(conn, "graph_radius")
        if upto is None or radius is None or abs(float(radius) - self.params.eps) >= 1e-9:
            return
        ids, _ = self.store.vectors()
        missed = ids[ids > int(upto)]
        if len(missed):
            self.assign(missed)

    def _labels_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image id, identity) for face ids; faces unknown to the cache get image -1, identity -1."""
        m = min(len(ids), len(self._fid))
        if np.array_equal(self._fid[:m], ids[:m]):
            # the usual case: the store's rows in id order, then faces not read yet (a batch)
            img, ident = np.full(len(ids), -1, np.int64), np.full(len(ids), -1, np.int64)
            img[:m], ident[:m] = self._fimg[:m], self._fident[:m]
            return img, ident
        pos = np.searchsorted(self._fid, ids)
        pos = np.minimum(pos, max(len(self._fid) - 1, 0))
        ok = (self._fid[pos] == ids) if len(self._fid) else np.zeros(len(ids), bool)
        return np.where(ok, self._fimg[pos] if len(self._fid) else -1, -1), \
            np.where(ok, self._fident[pos] if len(self._fid) else -1, -1)

    # ---- incremental assignment ---------------------------------------------------------------

    def assign(self, face_ids: Iterable[int]) -> Optional[ReclusterResult]:
        """Place new faces against the stored ones and write the result (retried if a correction
        lands meanwhile). Returns the result, or None when none of the faces is still stored."""
        with self._work:
            for _ in range(5):
                self._ensure_loaded()
                res = self._assign_once(np.unique(np.asarray(list(face_ids), np.int64)))
                if res is None:
                    return None
                result, marker, new_img = res
                if self._apply(result, marker, graph=result.edges, new_faces=(result.ids[:len(new_img)], new_img)):
                    self._since_recluster += len(new_img)
                    self._write_doubt(result.ids)   # the new faces, and any they moved
                    if result.created or result.merged or result.split or result.faces_moved or len(new_img):
                        self.on_changed()
                    return result
                self._reload()
            raise RuntimeError("corrections kept changing while faces were being assigned")

    def _assign_once(self, new: np.ndarray):
        ids, matrix = self.store.vectors()
        with self.store.read() as conn:
            marker = history_marker(conn)
            constraints = load_constraints(conn)
            marks = ",".join("?" * len(new))
            img_of = dict(conn.execute(f"SELECT id, image_id FROM faces WHERE id IN ({marks})",
                                       new.tolist())) if len(new) else {}
        present, rows = rows_of(ids, new)
        new, rows = new[present], rows[present]
        if not len(new):
            return None
        rows_sorted = np.sort(rows)
        lo, hi = int(rows_sorted[0]), int(rows_sorted[-1]) + 1
        img, ident = self._labels_for(ids)
        self._search.sync(ids, matrix, ident)
        sq, tails = self._search.sq, self._search.tails
        if hi - lo == len(rows):
            # the usual case: the batch is one block; faces after it arrived later and are
            # placed in the next round (with this batch in the index)
            keep: "slice | np.ndarray" = slice(0, lo)
        else:   # a face came back into the matrix out of order: copy the rest
            keep = np.ones(len(ids), bool); keep[rows] = False
        # the bounds cover every row of the matrix, so they cover the index's rows too
        index = FaceIndex(ids[keep], matrix[keep], ident[keep], img[keep], sq[keep], tails[keep],
                          self._search.bounds)
        new_img = np.array([img_of[int(f)] for f in new], np.int64)
        result = assign_incremental(index, new, matrix[rows], new_img, self.params, constraints)
        return result, marker, new_img

    # ---- reclustering -------------------------------------------------------------------------

    def recluster(self, reason: str = "requested") -> ReclusterResult:
        """Cluster every face again over the stored graph, keeping ids; write and log the result."""
        with self._work:
            for _ in range(5):
                t0 = time.perf_counter()
                self._ensure_loaded()
                self._assign_missed()
                ids, matrix = self.store.vectors()
                with self.store.read() as conn:
                    marker = history_marker(conn)
                    constraints = load_constraints(conn)
                graph, fresh = self._graph_for(ids, matrix)
                img, prev = self._labels_for(ids)
                if (img < 0).any():     # faces stored since the cache was read
                    self._reload()
                    img, prev = self._labels_for(ids)
                result = recluster(ids, matrix, img, self.params, constraints, prev, graph=graph)
                edges = None
                if fresh:
                    edges = Graph(ids[graph.i], ids[graph.j], graph.d)
                if self._apply(result, marker, graph=edges, replace_graph=fresh,
                               previous=prev, upto=int(ids.max()) if len(ids) else 0):
                    # tight bounds again (moved faces only ever widen them)
                    self._search.invalidate()
                    self._search.sync(ids, matrix, self._labels_for(ids)[1])
                    self._write_doubt(None)
                    self._since_recluster = 0
                    self._last_recluster = time.monotonic()
                    counts = result.counts()
                    counts["faces"] = int(len(ids))
                    counts["identities"] = int(len(np.unique(result.identity[result.identity != -1])))
                    self.last_counts = counts
                    log.info("recluster (%s): %d faces in %d identities; created %d, merged %d, "
                             "split %d, dissolved %d, faces moved %d, suggestions %d (%.2f s)",
                             reason, len(ids), counts["identities"], result.created, result.merged,
                             result.split, result.dissolved, result.faces_moved,
                             len(result.suggestions), time.perf_counter() - t0)
                    if result.created or result.merged or result.split or result.faces_moved \
                            or result.dissolved:
                        self.on_changed()
                    return result
                self._reload()
            raise RuntimeError("corrections kept changing during the recluster")

    def _graph_for(self, ids: np.ndarray, matrix: np.ndarray) -> tuple[Graph, bool]:
        """The stored eps-graph by row position, or a brute-force one (True) when the stored one
        is incomplete (faces never assigned) or was built with a smaller radius than eps."""
        with self.store.read() as conn:
            radius = meta_get(conn, "graph_radius")
            upto = meta_get(conn, "graph_upto")
            complete = (radius is not None and abs(float(radius) - self.params.eps) < 1e-9
                        and upto is not None and (not len(ids) or int(upto) >= int(ids.max())))
            if complete:
                graph = read_graph(conn, ids, self.params.eps)
        if not complete:
            log.info("building the neighbour graph of %d faces (eps %.3f)", len(ids), self.params.eps)
            return build_graph(matrix, self.params.eps), True
        return graph, False

    def _add_edges(self, face_ids: np.ndarray) -> None:
        """Edges of faces that came back to the matrix, against every face in it."""
        ids, matrix = self.store.vectors()
        rows = np.flatnonzero(np.isin(ids, face_ids))
        with self.store.read() as conn:
            radius = float(meta_get(conn, "graph_radius") or self.params.eps)
        found = [(ids[rows[q]], ids[r], d) for q, r, d in radius_neighbours(matrix, matrix[rows], radius)]
        if found:
            a = np.concatenate([f[0] for f in found]); b = np.concatenate([f[1] for f in found])
            d = np.concatenate([f[2] for f in found])
            keep = a != b
            with self.store.transaction() as conn:
                write_edges(conn, a[keep], b[keep], d[keep])

    def _write_doubt(self, face_ids: Optional[np.ndarray]) -> None:
        """The review queue's scores (``people.doubt``) of these faces, or of every face (None),
        against the labels just written. Advice only: a failure is logged, the labels stand."""
        try:
            self._score_doubt(face_ids)
        except Exception:
            log.exception("the review queue's doubt scores could not be written; the next "
                          "recluster writes them again")

    def _score_doubt(self, face_ids: Optional[np.ndarray]) -> None:
        ids, matrix = self.store.vectors()
        if not len(ids):
            return
        _, ident = self._labels_for(ids)
        rows = None
        if face_ids is not None:
            present, found = rows_of(ids, np.asarray(face_ids, np.int64))
            rows = found[present]
        rows, score, cand = doubt(matrix, ident, self.params.eps, rows)
        with self.store.transaction() as conn:
            write_doubt(conn, ids[rows], score, cand, replace_all=face_ids is None)

    # ---- writing a result ---------------------------------------------------------------------

    def _apply(self, result: ReclusterResult, marker, graph: Optional[Graph] = None,
               replace_graph: bool = False, new_faces=None, previous: Optional[np.ndarray] = None,
               upto: Optional[int] = None) -> bool:
        """Write labels, new identities, merges, suggestions and edges in one transaction; False
        (nothing written) when a correction landed since ``marker`` was read."""
        ids, label = result.ids, result.identity.copy()
        if previous is None:
            _, previous = self._labels_for(ids)
        n_new = 0 if new_faces is None else len(new_faces[0])
        now = time.time()
        with self.store.transaction() as conn:
            if history_marker(conn) != marker:
                return False
            new_of: dict[int, int] = {}
            for p in sorted(set(label[label <= -2].tolist()), reverse=True):
                new_of[p] = conn.execute("INSERT INTO identities (created_at) VALUES (?)",
                                         (now,)).lastrowid
            if new_of:
                lut_keys = np.array(list(new_of), np.int64)
                for k in lut_keys:
                    label[label == k] = new_of[int(k)]
            # ids read before an identity was retired stand for the one that survived
            label, previous = to_live(conn, label), to_live(conn, previous)
            changed = (label != previous)
            changed[:n_new] = True
            upd = [(None if lab < 0 else int(lab), int(f))
                   for f, lab in zip(ids[changed].tolist(), label[changed].tolist())]
            conn.executemany("UPDATE faces SET identity_id = ? WHERE id = ? AND pinned = 0 "
                             "AND rejected = 0", upd)
            record_merges(conn, previous, label)
            for s in result.suggestions:
                record_suggestion(conn, s.a, s.b, s.distance)
            if replace_graph:
                conn.execute("DELETE FROM face_edges")
            if graph is not None and len(graph.i):
                write_edges(conn, graph.i, graph.j, graph.d)
            if replace_graph or new_faces is not None:
                top = upto if upto is not None else int(new_faces[0].max())
                old = meta_get(conn, "graph_upto")
                if replace_graph:
                    meta_set(conn, "graph_upto", top)
                    meta_set(conn, "graph_radius", self.params.eps)
                elif old is not None:   # else the graph was never complete: a recluster rebuilds it
                    meta_set(conn, "graph_upto", max(top, int(old)))
        # the cache follows what was written (pinned faces were left alone by the UPDATE)
        if new_faces is not None and n_new:
            self._fid = np.concatenate([self._fid, ids[:n_new]])
            self._fimg = np.concatenate([self._fimg, new_faces[1]])
            self._fident = np.concatenate([self._fident, np.full(n_new, -1, np.int64)])
            if len(self._fid) > n_new and self._fid[-n_new] < self._fid[-n_new - 1]:
                order = np.argsort(self._fid, kind="stable")
                self._fid, self._fimg, self._fident = self._fid[order], self._fimg[order], self._fident[order]
        pos = np.searchsorted(self._fid, ids)
        ok = pos < len(self._fid)
        ok[ok] = self._fid[pos[ok]] == ids[ok]
        pinned = set(load_pinned_ids(self.store, ids[changed]))
        for k in np.flatnonzero(ok & changed):
            if int(ids[k]) not in pinned:
                self._fident[pos[k]] = label[k]
        return True

def service_for(store: Store, clustering, default_eps: float,
                on_changed: Optional[Callable[[], None]] = None) -> IdentityService:
    """The service as the config asks: ``clustering.eps`` (``auto`` = the embedder's tuned eps),
    ``min_samples`` and the two recluster triggers."""
    params = ClusterParams.for_embedder(default_eps, clustering.eps, clustering.min_samples)
    return IdentityService(store, params, clustering.recluster_interval_s,
                           clustering.recluster_after_faces, on_changed=on_changed)


