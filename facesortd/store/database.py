"""The persistent store: SQLite (WAL) under the state dir, plus every face vector in memory.

One connection, guarded by a re-entrant lock, serves all threads: the pipeline thread writes, the
status and web threads read. Each write method is one transaction, so a crash never leaves an image
half-recorded. The non-rejected face vectors are also kept as one float32 matrix that grows like a
list, so nearest-neighbour search never rereads SQLite. The tables are defined in ``store_schema``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from facesortd.errors import StoreError
from facesortd.store.schema import SCHEMA_VERSION, migrate, schema_version

DB_NAME = "facesortd.db"
#: other: not a photo, a file the placer keeps for ``placement.other_dir`` (watch.other_files)
STATUSES = ("pending", "done", "noface", "error", "duplicate", "other")
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the decoded image
FaceIn = tuple[Box, float, np.ndarray]  # box (x1, y1, x2, y2), detector score, vector [dim]
PathLike = Union[str, "os.PathLike[str]"]

_VECTOR_DTYPE = np.dtype("<f4")  # on disk: float32 little-endian, whatever the machine
_LOAD_CHUNK = 8192


def encode_path(path: PathLike) -> Union[str, bytes]:
    """A path as the store keeps it: text, or its raw bytes when the name is not valid UTF-8."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # an undecodable byte in a file name (surrogateescape)
        return os.fsencode(text)


def decode_path(value: Union[str, bytes]) -> Path:
    return Path(os.fsdecode(value) if isinstance(value, bytes) else value)


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: Path
    inbox: Path
    sha256: Optional[str]
    size: int
    mtime_ns: int
    status: str
    error: Optional[str]
    created_at: float
    updated_at: float
    duplicate_of: Optional[int] = None


_IMAGE_COLUMNS = ("id, path, inbox, sha256, size, mtime_ns, status, error, created_at, updated_at, "
                  "duplicate_of")


def _image_row(row: tuple) -> ImageRow:
    return ImageRow(row[0], decode_path(row[1]), decode_path(row[2]), *row[3:])


class _Vectors:
    """Face ids and vectors in two arrays with spare capacity, like a list.

    Rows below ``n`` are never written again: appends write past them and removals build new
    arrays, so the views handed out by ``view()`` stay valid and unchanged for their holders.
    """

    def __init__(self, dim: int, capacity: int = 0):
        self.dim = dim
        self.n = 0
        self.ids = np.empty(capacity, dtype=np.int64)
        self.matrix = np.empty((capacity, dim), dtype=np.float32)

    def append(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        k = len(ids)
        if self.n + k > len(self.ids):
            capacity = max(self.n + k, 2 * len(self.ids), 1024)
            new_ids = np.empty(capacity, dtype=np.int64)
            new_matrix = np.empty((capacity, self.dim), dtype=np.float32)
            new_ids[: self.n] = self.ids[: self.n]
            new_matrix[: self.n] = self.matrix[: self.n]
            self.ids, self.matrix = new_ids, new_matrix
        self.ids[self.n : self.n + k] = ids
        self.matrix[self.n : self.n + k] = vectors
        self.n += k

    def remove(self, ids: Sequence[int]) -> None:
        keep = ~np.isin(self.ids[: self.n], np.asarray(ids, dtype=np.int64))
        kept = int(keep.sum())
        if kept == self.n:
            return
        new_ids = np.empty(len(self.ids), dtype=np.int64)
        new_matrix = np.empty_like(self.matrix)
        np.compress(keep, self.ids[: self.n], out=new_ids[:kept])
        np.compress(keep, self.matrix[: self.n], axis=0, out=new_matrix[:kept])
        self.ids, self.matrix, self.n = new_ids, new_matrix, kept

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        ids, matrix = self.ids[: self.n], self.matrix[: self.n]
        ids.flags.writeable = False
        matrix.flags.writeable = False
        return ids, matrix


class Store:
    """The database of images, faces and identities. Open with ``Store.open(state_dir)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        self._on_commit: list[Callable[[], None]] = []
        self._dim: Optional[int] = None  # set by bind_model(): faces may be recorded after it
        self._vectors: Optional[_Vectors] = None
        self._vectors_loaded = False
        self._removable: Optional[bool] = None   # images.removed_at exists (see _kept)

    # ---- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, *, load_vectors: bool = True) -> "Store":
        """Open (or create) ``<state_dir>/facesortd.db``, migrating an older schema forward.

        ``load_vectors=False`` defers reading the vectors until ``vectors()`` is first called; for
        short-lived readers such as ``facesortd status``.
        """
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / DB_NAME
        try:
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from None
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA foreign_keys = ON")
            # A new file only: 16 KiB pages hold seven 512-d vectors where 4 KiB pages hold one
            # (a 2 KiB row does not fit twice), so the file is ~45% smaller and loads faster.
            conn.execute("PRAGMA page_size = 16384")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r}); "
                                 "put state_dir on a local disk, not a network share")
            conn.execute("PRAGMA synchronous = NORMAL")
            version = schema_version(conn)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} has schema version {version}, but this facesortd knows versions up to "
                    f"{SCHEMA_VERSION}: it was written by a newer facesortd. Upgrade facesortd, or "
                    "point state_dir at a new folder to start a new store.")
            if version < SCHEMA_VERSION:
                migrate(conn)
            store = cls(conn, path)
            if load_vectors:
                store._load_vectors()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot use the store {path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def transaction(self, durable: bool = False):
        """A write transaction for modules that keep their own tables (identities, placement):
        ``with store.transaction() as conn: conn.execute(...)``; nested uses join the outer one.

        ``durable=True``: the commit is on the disk when the block ends, not only in the WAL's
        page cache (``synchronous=FULL`` for this commit; the store runs NORMAL, which survives a
        killed process but may lose the last commits in a power cut). For rows that must outlive
        what happens next on the disk: the journal's 'planned' rows, written before the files
        move. It cannot join an outer transaction (whose commit would not be synced).
        """
        return self._tx(durable)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, held for a group of reads that must see one state."""
        with self._lock:
            yield self._conn

    @contextmanager
    def _tx(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested uses join the outer one. ``_on_commit`` runs after COMMIT."""
        with self._lock:
            if self._conn.in_transaction:
                if durable:
                    raise RuntimeError("a durable transaction cannot join an outer one")
                yield self._conn
                return
            if durable:
                self._conn.execute("PRAGMA synchronous = FULL")   # WAL: fsync at this COMMIT
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._on_commit.clear()
                raise
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous = NORMAL")
            callbacks, self._on_commit = self._on_commit, []
            for callback in callbacks:
                callback()

    def _kept(self) -> str:
        """`` AND removed_at IS NULL``: not an image a person deleted from the library (schema 9;
        empty for a store of an older schema used as it is, as doctor and its tests do)."""
        if self._removable is None:
            with self._lock:
                self._removable = any(r[1] == "removed_at" for r in
                                      self._conn.execute("PRAGMA table_info(images)"))
        return " AND removed_at IS NULL" if self._removable else ""

    def _meta(self, key: str) -> Optional[str]:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # ---- the model guard ----------------------------------------------------------------------

    def bind_model(self, model_id: str, dim: int) -> None:
        """Record the embedder that makes this store's vectors, or refuse a different one."""
        with self._tx() as conn:
            known_id, known_dim = self._meta("model_id"), self._meta("dim")
            if known_id is None:
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [("model_id", model_id), ("dim", str(int(dim)))])
            elif known_id != model_id or int(known_dim or 0) != int(dim):
                count = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
                raise StoreError(
                    f"the store {self.path} was made by model {known_id} ({known_dim}-d) and holds "
                    f"{count} vectors of it; the configured embedder is model {model_id} ({dim}-d). "
                    "Vectors of two models are never mixed. To re-embed this store with the new "
                    "model and keep every name and correction, run facesortd migrate --to "
                    f"{model_id.split('-')[0]}; to keep it as it is, set embedder.name to auto "
                    "(or back to what made it, with the same embedder.weights).")
        with self._lock:
            self._dim = int(dim)
            if self._vectors is None:
                self._vectors = _Vectors(self._dim)

    @property
    def model_id(self) -> Optional[str]:
        with self._lock:
            return self._meta("model_id")

    # ---- images -------------------------------------------------------------------------------

    def find_image_by_path(self, path: PathLike) -> Optional[ImageRow]:
        with self._lock:
            row = self._conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE path = ?",
                                     (encode_path(path),)).fetchone()
        return _image_row(row) if row else None

    def find_image_by_sha(self, sha256: str) -> Optional[ImageRow]:
        """The oldest image with this content whose faces are fully recorded, to copy them from.

        'done' and 'noface' images, and 'duplicate' ones (which hold copies), so the content stays
        known after the original path is replaced by another file. Not one a person deleted
        from the library (``removed_at``): the same content arriving again is a new arrival.
        """
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE sha256 = ? "
                f"AND status IN ('done', 'noface'){self._kept()} ORDER BY id LIMIT 1",
                (sha256,)).fetchone()
        return _image_row(row) if row else None

    def find_originals(self, shas: Sequence[str]) -> dict[str, int]:
        """``find_image_by_sha`` for many hashes in one query: sha256 -> the original's image id."""
        found: dict[str, int] = {}
        shas = list(dict.fromkeys(shas))
        with self._lock:
            for start in range(0, len(shas), 900):
                part = shas[start:start + 900]
                # +status: look rows up by sha256 only; with the status index SQLite scanned
                # every done image (1.4 ms per 16 hashes at 3,000 images, not 0.08)
                for sha, image_id in self._conn.execute(
                        f"SELECT sha256, MIN(id) FROM images WHERE sha256 IN "
                        f"({','.join('?' * len(part))}) AND +status IN ('done', 'noface')"
                        f"{self._kept()} GROUP BY sha256", part):
                    found[sha] = image_id
        return found

    def images_with_status(self, *statuses: str) -> list[ImageRow]:
        """Every image in one of ``statuses``, oldest first."""
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = self._conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE status IN "
                                      f"({marks}) ORDER BY id", statuses).fetchall()
        return [_image_row(r) for r in rows]

    def get_image(self, image_id: int) -> Optional[ImageRow]:
        with self._lock:
            row = self._conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = ?",
                                     (image_id,)).fetchone()
        return _image_row(row) if row else None

    def add_image(self, path: PathLike, inbox: PathLike, sha256: Optional[str], size: int,
                  mtime_ns: int, status: str = "pending", error: Optional[str] = None) -> int:
        """Record a file; a path seen before (a file replaced in the inbox) reuses its row and
        forgets the old content's faces."""
        _check_status(status)
        now = time.time()
        with self._tx() as conn:
            row = conn.execute("SELECT id FROM images WHERE path = ?",
                               (encode_path(path),)).fetchone()
            if row is None:
                return conn.execute(
                    "INSERT INTO images (path, inbox, sha256, size, mtime_ns, status, error, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (encode_path(path), encode_path(inbox), sha256, size, mtime_ns, status, error,
                     now, now)).lastrowid
            image_id = row[0]
            self._delete_faces(image_id)
            # Files that were duplicates of the old content must be ingested on their own now.
            conn.execute("UPDATE images SET status = 'pending', duplicate_of = NULL, "
                         "updated_at = ? WHERE duplicate_of = ?", (now, image_id))
            conn.execute(
                "UPDATE images SET inbox = ?, sha256 = ?, size = ?, mtime_ns = ?, status = ?, "
                "error = ?, duplicate_of = NULL, updated_at = ? WHERE id = ?",
                (encode_path(inbox), sha256, size, mtime_ns, status, error, now, image_id))
            if self._kept():   # a new file at the path of one deleted from the library
                conn.execute("UPDATE images SET removed_at = NULL WHERE id = ?", (image_id,))
            return image_id

    def record_error(self, path: PathLike, inbox: PathLike, sha256: Optional[str], size: int,
                     mtime_ns: int, reason: str) -> int:
        """Record a file that could not be ingested, with its readable reason."""
        return self.add_image(path, inbox, sha256, size, mtime_ns, status="error", error=reason)

    def set_image_status(self, image_id: int, status: str, error: Optional[str] = None) -> None:
        _check_status(status)
        with self._tx() as conn:
            cur = conn.execute("UPDATE images SET status = ?, error = ?, updated_at = ? "
                               "WHERE id = ?", (status, error, time.time(), image_id))
            if cur.rowcount != 1:
                raise KeyError(f"no image with id {image_id}")

    def images_in_folder(self, folder: PathLike, *statuses: str) -> list[ImageRow]:
        """Images whose inbox path is directly in ``folder``, in one of ``statuses`` (a
        companion arriving after its photo looks for the photo among these)."""
        prefix = os.fspath(folder).rstrip(os.sep) + os.sep
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE path >= ? AND path < ? "
                f"AND status IN ({marks})", (prefix, prefix + "\U0010ffff", *statuses)).fetchall()
        return [r for r in map(_image_row, rows) if os.fspath(r.path.parent) == prefix[:-1]]

    def image_is_current(self, path: PathLike, size: int, mtime_ns: int) -> bool:
        """True if this exact file (same size and mtime) already has its faces recorded, or is
        a broken file that ``facesortd undo`` took back out of quarantine and holds.

        One a person deleted from the library is not current: dropped again, it is sorted again.
        'pending' is not current (the daemon stopped while working on it), nor is any other
        'error': a broken file is moved to quarantine, so one still in the inbox failed for another
        reason (the model, the disk) and is worth another try.
        """
        with self._lock:
            row = self._conn.execute(
                f"SELECT 1 FROM images WHERE path = ? AND size = ? AND mtime_ns = ?{self._kept()} "
                "AND (status IN ('done', 'noface', 'duplicate', 'other') OR status = 'error' AND EXISTS ("
                "SELECT 1 FROM placements WHERE image_id = images.id AND kind = 'held' "
                "AND mtime_ns = images.mtime_ns))",
                (encode_path(path), size, mtime_ns)).fetchone()
        return row is not None

    # ---- faces --------------------------------------------------------------------------------

    def add_faces(self, image_id: int, faces: Sequence[FaceIn]) -> list[int]:
        """Record an image's faces (replacing any from before) and mark it 'done', or 'noface'
        when the list is empty, in one transaction. Returns the new face ids in order."""
        with self._lock:
            vectors = self._check_vectors([vector for _, _, vector in faces])
            rows = [(image_id, *map(float, box), float(score), vector.tobytes())
                    for (box, score, _), vector in zip(faces, vectors)]
            return self._insert_faces(image_id, rows, "done" if faces else "noface",
                                      vectors, rejected=[0] * len(rows))

    def add_ingested(self, items: Sequence[tuple[PathLike, PathLike, str, int, int,
                                                 Sequence[FaceIn]]]) -> list[tuple[int, list[int]]]:
        """Record ingested files, each (path, inbox, sha256, size, mtime_ns, faces), as
        ``add_image`` then ``add_faces`` would, in one transaction and one statement per table for
        new paths (the pipeline's micro-batches: per-row statements cost its model thread more
        than the model on a GPU). Returns (image id, face ids) per item."""
        if not items:
            return []
        out: list[Optional[tuple[int, list[int]]]] = [None] * len(items)
        with self._tx() as conn:
            paths = [encode_path(it[0]) for it in items]
            known = self._ids_by_path(paths)
            fresh = [i for i, p in enumerate(paths) if p not in known]
            vectors = self._check_vectors([v for i in fresh for _, _, v in items[i][5]])
            for i, p in enumerate(paths):   # a file replaced at a known path: the full path
                if p in known:
                    path, inbox, sha, size, mtime_ns, faces = items[i]
                    image_id = self.add_image(path, inbox, sha, size, mtime_ns)
                    out[i] = (image_id, self.add_faces(image_id, faces))
            model_id, now = self._require_model(), time.time()
            conn.executemany(
                "INSERT INTO images (path, inbox, sha256, size, mtime_ns, status, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(paths[i], encode_path(items[i][1]), items[i][2], items[i][3], items[i][4],
                  "done" if items[i][5] else "noface", now, now) for i in fresh])
            image_ids = self._ids_by_path([paths[i] for i in fresh])
            conn.executemany(
                "INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, vector, "
                "model_id, rejected, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                [(image_ids[paths[i]], *map(float, box), float(score), vector.tobytes(),
                  model_id, now)
                 for i, (box, score, _), vector in zip(
                     (i for i in fresh for _ in items[i][5]),
                     (f for i in fresh for f in items[i][5]), vectors)])
            faces_of: dict[int, list[int]] = {}
            new_ids = [image_ids[paths[i]] for i in fresh]
            for start in range(0, len(new_ids), 900):
                part = new_ids[start:start + 900]
                for image_id, face_id in conn.execute(
                        f"SELECT image_id, id FROM faces WHERE image_id IN "
                        f"({','.join('?' * len(part))}) ORDER BY id", part):
                    faces_of.setdefault(image_id, []).append(face_id)
            for i in fresh:
                image_id = image_ids[paths[i]]
                out[i] = (image_id, faces_of.get(image_id, []))
            live = [f for i in fresh for f in out[i][1]]   # type: ignore[index]
            if len(live) != len(vectors):
                raise RuntimeError(f"recorded {len(live)} faces for {len(vectors)} vectors")
            if live and self._vectors_loaded:
                self._on_commit.append(lambda: self._vectors.append(live, vectors))
        return out  # type: ignore[return-value]

    def _ids_by_path(self, paths: Sequence[Union[str, bytes]]) -> dict[Union[str, bytes], int]:
        """Inside a transaction: image id by encoded path, for the paths that have a row."""
        found: dict[Union[str, bytes], int] = {}
        for start in range(0, len(paths), 900):
            part = list(paths[start:start + 900])
            found.update((p, i) for i, p in self._conn.execute(
                f"SELECT id, path FROM images WHERE path IN ({','.join('?' * len(part))})", part))
        return found

    def mark_duplicate(self, image_id: int, original_id: int) -> None:
        """Record that ``image_id`` has the same content as ``original_id`` (not embedded again).

        The duplicate holds no faces of its own: its people are the original's.
        """
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM images WHERE id = ? AND status IN ('done', 'noface')",
                            (original_id,)).fetchone() is None:
                raise KeyError(f"image {original_id} is not an ingested original")
            self._delete_faces(image_id)
            cur = conn.execute("UPDATE images SET status = 'duplicate', duplicate_of = ?, "
                               "error = NULL, updated_at = ? WHERE id = ?",
                               (original_id, time.time(), image_id))
            if cur.rowcount != 1:
                raise KeyError(f"no image with id {image_id}")

    def _insert_faces(self, image_id: int, rows: list[tuple], status: str, vectors: np.ndarray,
                      rejected: list[int]) -> list[int]:
        model_id, now = self._require_model(), time.time()
        with self._tx() as conn:
            self._delete_faces(image_id)
            cur = conn.execute("UPDATE images SET status = ?, error = NULL, updated_at = ? "
                               "WHERE id = ?", (status, now, image_id))
            if cur.rowcount != 1:
                raise KeyError(f"no image with id {image_id}")
            ids = [conn.execute(
                "INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, vector, "
                "model_id, rejected, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, model_id, rej, now)).lastrowid for row, rej in zip(rows, rejected)]
            live = [i for i, rej in zip(ids, rejected) if not rej]
            if live and self._vectors_loaded:
                self._on_commit.append(lambda: self._vectors.append(live, vectors))
        return ids

    def add_face(self, image_id: int, box: Sequence[float], vector: np.ndarray,
                 score: float = 1.0) -> int:
        """One more face on an ingested photo (a face a person drew that the detector missed),
        beside its others; a 'noface' photo becomes 'done'. Joins an outer ``transaction()``;
        the vector joins the in-memory matrix at its commit. Returns the face id."""
        model_id, dim = self._meta("model_id"), self._meta("dim")
        if model_id is None or dim is None:
            raise KeyError("the store holds no face yet: there is no model to embed with")
        vectors = np.asarray(vector, dtype=_VECTOR_DTYPE).reshape(1, -1)
        if vectors.shape[1] != int(dim) or not np.isfinite(vectors).all():
            raise ValueError(f"a face vector must be {dim} finite float32 values")
        now = time.time()
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None or row[0] not in ("done", "noface"):
                raise KeyError(f"image {image_id} is not an ingested photo")
            conn.execute("UPDATE images SET status = 'done', updated_at = ? WHERE id = ?",
                         (now, image_id))
            face_id = conn.execute(
                "INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, vector, "
                "model_id, rejected, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (image_id, *map(float, box), float(score), vectors[0].tobytes(), model_id,
                 now)).lastrowid
            if self._vectors_loaded:
                self._on_commit.append(lambda: self._vectors.append([face_id], vectors))
        return face_id

    def _delete_faces(self, image_id: int) -> None:
        """Inside a transaction: drop an image's faces, and their vectors once it commits."""
        ids = [r[0] for r in self._conn.execute("SELECT id FROM faces WHERE image_id = ?",
                                                (image_id,))]
        if ids:
            self._conn.execute("DELETE FROM faces WHERE image_id = ?", (image_id,))
            if self._vectors_loaded:
                self._on_commit.append(lambda: self._vectors.remove(ids))

    def set_rejected(self, face_ids: Sequence[int], rejected: bool = True) -> None:
        """Mark faces as not-a-face (their vectors leave the in-memory matrix) or take that back
        (they return to it). Joins an outer ``transaction()``; the matrix changes at its commit."""
        ids = [int(i) for i in face_ids]
        if not ids:
            return
        with self._tx() as conn:
            marks = ",".join("?" * len(ids))
            changing = [r[0] for r in conn.execute(
                f"SELECT id FROM faces WHERE id IN ({marks}) AND rejected = ?",
                (*ids, 0 if rejected else 1))]
            if not changing:
                return
            marks = ",".join("?" * len(changing))
            conn.execute(f"UPDATE faces SET rejected = ? WHERE id IN ({marks})",
                         (1 if rejected else 0, *changing))
            if not self._vectors_loaded:
                return
            if rejected:
                self._on_commit.append(lambda: self._vectors.remove(changing))
            else:
                rows = conn.execute(f"SELECT id, vector FROM faces WHERE id IN ({marks}) "
                                    "ORDER BY id", changing).fetchall()
                back = [r[0] for r in rows]
                vectors = np.frombuffer(b"".join(r[1] for r in rows),
                                        dtype=_VECTOR_DTYPE).reshape(len(rows), -1)
                self._on_commit.append(lambda: self._vectors.append(back, vectors))

    def _require_model(self) -> str:
        model_id = self._meta("model_id")
        if model_id is None or self._dim is None:
            raise RuntimeError("call bind_model() before recording faces")
        return model_id

    def _check_vectors(self, vectors: list[np.ndarray]) -> np.ndarray:
        self._require_model()
        dim = self._dim
        if not vectors:
            return np.empty((0, dim), dtype=_VECTOR_DTYPE)
        matrix = np.asarray(np.stack(vectors), dtype=_VECTOR_DTYPE)
        if matrix.shape != (len(vectors), dim):
            raise ValueError(f"face vectors must have shape ({dim},); got {matrix.shape[1:]}")
        if not np.isfinite(matrix).all():
            raise ValueError("face vectors must be finite (the embedder returned NaN or inf)")
        return matrix

    # ---- the in-memory matrix -----------------------------------------------------------------

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(face ids int64 [N], vectors float32 [N, dim]) of every non-rejected face, by id.

        Read-only views, cheap to take; later writes never change them, so a reader may hold them
        as a snapshot for as long as it likes.
        """
        with self._lock:
            if not self._vectors_loaded:
                self._load_vectors()
            if self._vectors is None:
                return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
            return self._vectors.view()

    def _load_vectors(self) -> None:
        """Read every vector in one query, a chunk of rows at a time into one preallocated matrix."""
        with self._lock:
            dim = self._meta("dim")
            if dim is None:
                self._vectors, self._vectors_loaded = None, True
                return
            dim = int(dim)
            # COUNT(*) walks the small faces_image index, not the vector pages
            upper = self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
            vectors = _Vectors(dim, capacity=upper)
            cur = self._conn.execute("SELECT id, vector FROM faces WHERE rejected = 0 ORDER BY id")
            while chunk := cur.fetchmany(_LOAD_CHUNK):
                ids, blobs = zip(*chunk)
                data = b"".join(blobs)
                if len(data) != len(blobs) * dim * _VECTOR_DTYPE.itemsize:
                    raise StoreError(f"{self.path}: a face vector is not {dim} float32 values; "
                                     "the store is damaged")
                vectors.append(ids, np.frombuffer(data, dtype=_VECTOR_DTYPE).reshape(-1, dim))
            self._vectors, self._vectors_loaded = vectors, True

    # ---- another model's vectors, staged beside these (facesortd migrate) ----------------------

    def staged_progress(self, model_id: str) -> tuple[int, int]:
        """(faces with a vector of ``model_id`` staged, or marked gone; faces in the store)."""
        with self._lock:
            staged = self._conn.execute("SELECT COUNT(*) FROM staged_vectors WHERE model_id = ?",
                                        (model_id,)).fetchone()[0]
            return staged, self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]

    def staged_models(self) -> dict[str, int]:
        """model id -> faces staged for it (an unfinished or dry-run ``facesortd migrate``)."""
        with self._lock:
            return dict(self._conn.execute(
                "SELECT model_id, COUNT(*) FROM staged_vectors GROUP BY model_id").fetchall())

    def unstaged_faces(self, model_id: str, limit: int) -> list[tuple[int, int, Box]]:
        """Up to ``limit`` faces (rejected ones too) with nothing of ``model_id`` staged yet, as
        (face id, image id, box), by image then face: one photo's faces come together."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, image_id, box_x1, box_y1, box_x2, box_y2 FROM faces f WHERE NOT EXISTS "
                "(SELECT 1 FROM staged_vectors s WHERE s.face_id = f.id AND s.model_id = ?) "
                "ORDER BY image_id, id LIMIT ?", (model_id, int(limit))).fetchall()
        return [(r[0], r[1], tuple(r[2:6])) for r in rows]

    def stage_vectors(self, model_id: str, dim: int, face_ids: Sequence[int],
                      vectors: Sequence[Optional[np.ndarray]]) -> None:
        """Keep another model's vectors (None: the face's photo is gone) beside the ones in force,
        in one transaction; faces deleted meanwhile are skipped. No search ever reads them."""
        rows = []
        for face_id, vector in zip(face_ids, vectors):
            if vector is not None:
                vector = np.asarray(vector, dtype=_VECTOR_DTYPE)
                if vector.shape != (dim,) or not np.isfinite(vector).all():
                    raise ValueError(f"face {face_id}: a staged vector must be {dim} finite values")
                vector = vector.tobytes()
            rows.append((int(face_id), model_id, vector, int(face_id)))
        with self._tx() as conn:
            conn.executemany("INSERT OR REPLACE INTO staged_vectors (face_id, model_id, vector) "
                             "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM faces WHERE id = ?)", rows)

    def unstage(self, *, keep: Optional[str] = None, gone_of: Optional[str] = None) -> int:
        """Forget staged rows: every model's but ``keep``'s, or only the 'photo gone' marks of
        ``gone_of`` (checked again: the photo may be back). Returns the rows removed."""
        with self._tx() as conn:
            if gone_of is not None:
                return conn.execute("DELETE FROM staged_vectors WHERE model_id = ? AND vector IS NULL",
                                    (gone_of,)).rowcount
            return conn.execute("DELETE FROM staged_vectors WHERE model_id IS NOT ?", (keep,)).rowcount

    def staged_vectors(self, model_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, vectors) of ``model_id`` staged for the non-rejected faces, by id: what
        ``vectors()`` will hold once the store switches (for a dry run's prediction)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT s.face_id, s.vector FROM staged_vectors s JOIN faces f ON f.id = s.face_id "
                "WHERE s.model_id = ? AND s.vector IS NOT NULL AND f.rejected = 0 ORDER BY s.face_id",
                (model_id,)).fetchall()
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], np.int64)
        return ids, np.frombuffer(b"".join(r[1] for r in rows), _VECTOR_DTYPE).reshape(len(rows), -1)

    @contextmanager
    def switching_model(self, model_id: str, dim: int) -> Iterator[dict]:
        """One transaction that puts the staged vectors of ``model_id`` in force for every face,
        drops the faces whose photo was gone (their images become 'error' with the reason), makes
        ``model_id`` the store's model and forgets the eps-neighbour graph and the open merge
        suggestions (both measured with the old model; the next recluster rebuilds them). The
        block runs inside the same transaction (the recluster): all or nothing. ``vectors()``
        holds the new model's vectors inside the block and after it, the old ones again if it
        fails. Yields {'faces_dropped': [...], 'images_dropped': [...]}."""
        with self._lock:
            old_dim = self._dim
            try:
                with self._tx() as conn:
                    missing = conn.execute(
                        "SELECT COUNT(*) FROM faces f WHERE NOT EXISTS (SELECT 1 FROM staged_vectors "
                        "s WHERE s.face_id = f.id AND s.model_id = ?)", (model_id,)).fetchone()[0]
                    if missing:
                        raise StoreError(f"{missing} face(s) have no vector of {model_id} yet")
                    gone = conn.execute(
                        "SELECT f.id, f.image_id FROM faces f JOIN staged_vectors s ON s.face_id = f.id "
                        "AND s.model_id = ? WHERE s.vector IS NULL ORDER BY f.id", (model_id,)).fetchall()
                    images = sorted({image for _, image in gone})
                    conn.executemany("DELETE FROM faces WHERE id = ?", [(f,) for f, _ in gone])
                    conn.executemany(
                        "UPDATE images SET status = 'error', error = ?, updated_at = ? WHERE id = ? "
                        "AND NOT EXISTS (SELECT 1 FROM faces WHERE image_id = images.id)",
                        [(f"its file was gone when the store moved to model {model_id}: its faces "
                          "were dropped", time.time(), i) for i in images])
                    conn.execute(
                        "UPDATE faces SET model_id = ?, vector = (SELECT vector FROM staged_vectors s "
                        "WHERE s.face_id = faces.id AND s.model_id = ?)", (model_id, model_id))
                    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                     [("model_id", model_id), ("dim", str(int(dim)))])
                    conn.execute("DELETE FROM meta WHERE key IN ('graph_upto', 'graph_radius')")
                    conn.execute("DELETE FROM face_edges")
                    # open merge suggestions measured the old model's distances (dismissed ones
                    # are a person's decision and stay); the recluster records its own
                    conn.execute("DELETE FROM suggestions WHERE status = 'open'")
                    conn.execute("DELETE FROM staged_vectors")
                    self._dim, self._vectors, self._vectors_loaded = int(dim), None, False
                    yield {"faces_dropped": [f for f, _ in gone], "images_dropped": images}
            except BaseException:
                self._dim, self._vectors, self._vectors_loaded = old_dim, None, False
                raise

    def set_meta(self, key: str, value: str) -> None:
        """A meta value of the store's own (joins an outer transaction)."""
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> Optional[str]:
        with self._lock:
            return self._meta(key)

    # ---- status -------------------------------------------------------------------------------

    def counts(self) -> dict:
        """What ``facesortd status`` shows: images by status, faces, identities, photos placed with
        companions and the companions, other files, model, schema."""
        with self._lock:
            images = dict.fromkeys(STATUSES, 0)
            images.update(self._conn.execute("SELECT status, COUNT(*) FROM images GROUP BY status"))
            one = lambda sql: self._conn.execute(sql).fetchone()[0]  # noqa: E731
            rejected = one("SELECT COUNT(*) FROM faces WHERE rejected = 1")
            return {
                "images": images,
                "images_total": sum(images.values()),
                "faces": one("SELECT COUNT(*) FROM faces") - rejected,
                "faces_rejected": rejected,
                "faces_unassigned": one("SELECT COUNT(*) FROM faces "
                                        "WHERE identity_id IS NULL AND rejected = 0"),
                "identities": one("SELECT COUNT(*) FROM identities WHERE merged_into IS NULL"),
                # placed photos a person deleted from the library (library/scan.py)
                "images_removed": one("SELECT COUNT(*) FROM images WHERE removed_at IS NOT NULL")
                if self._kept() else 0,
                # files that travel with a photo, placed beside it (library/companions.py), and
                # files that are neither (placement.other_dir)
                "files": {
                    "groups": one("SELECT COUNT(DISTINCT image_id) FROM placements "
                                  "WHERE kind = 'companion'"),
                    "companions": one("SELECT COUNT(*) FROM placements WHERE kind = 'companion'"),
                    "other": images.get("other", 0),
                },
                "model_id": self._meta("model_id"),
                "dim": int(self._meta("dim")) if self._meta("dim") else None,
                "schema_version": schema_version(self._conn),
            }


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"image status must be one of {', '.join(STATUSES)}; not {status!r}")
