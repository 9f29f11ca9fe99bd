"""The store: what survives a restart, what it refuses, and what readers see while it writes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from facesortd.errors import StoreError
from facesortd.store import schema as store_schema
from facesortd.store.database import DB_NAME, ImageRow, Store
from facesortd.store.schema import MIGRATIONS, SCHEMA_VERSION

MODEL = "facenet-vggface2-test"
DIM = 8


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def faces_of(vectors: np.ndarray) -> list:
    return [((10.0 * i, 20.0, 10.0 * i + 50, 80.5), 0.99 - i / 100, v) for i, v in enumerate(vectors)]


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "state") as s:
        s.bind_model(MODEL, DIM)
        yield s


def ingest(store: Store, name: str, vectors: np.ndarray, sha: str | None = None) -> tuple[int, list[int]]:
    image_id = store.add_image(f"/inbox/{name}", "/inbox", sha or f"sha-{name}", 1000, 123)
    return image_id, store.add_faces(image_id, faces_of(vectors))


def test_open_creates_a_wal_database_with_the_current_schema(tmp_path):
    with Store.open(tmp_path / "new" / "state") as store:
        assert store.counts()["schema_version"] == SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / "new" / "state" / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "images", "faces", "identities", "cannot_link", "suggestions", "journal"} <= tables
    conn.close()


def test_images_faces_and_vectors_survive_reopen_bit_exact(tmp_path):
    vectors = unit_vectors(3)
    with Store.open(tmp_path) as store:
        store.bind_model(MODEL, DIM)
        image_id, face_ids = ingest(store, "a.jpg", vectors)
        empty_id, none = ingest(store, "landscape.jpg", vectors[:0])
    assert none == []
    with Store.open(tmp_path) as store:
        row = store.find_image_by_path("/inbox/a.jpg")
        assert isinstance(row, ImageRow)
        assert (row.id, row.path, row.inbox, row.sha256, row.size, row.mtime_ns, row.status) == (
            image_id, Path("/inbox/a.jpg"), Path("/inbox"), "sha-a.jpg", 1000, 123, "done")
        assert store.find_image_by_path("/inbox/landscape.jpg").status == "noface"
        ids, matrix = store.vectors()
        assert ids.tolist() == face_ids
        assert matrix.dtype == np.float32 and matrix.tobytes() == vectors.tobytes()
        counts = store.counts()
        assert counts["images"]["done"] == 1 and counts["images"]["noface"] == 1
        assert counts["faces"] == 3 and counts["model_id"] == MODEL and counts["dim"] == DIM
    conn = sqlite3.connect(tmp_path / DB_NAME)
    boxes = conn.execute("SELECT box_x1, box_y2, score, model_id FROM faces ORDER BY id").fetchall()
    conn.close()
    assert boxes[1] == (10.0, 80.5, pytest.approx(0.98), MODEL)


def test_a_replaced_file_reuses_its_row_and_forgets_the_old_faces(store):
    image_id, old_faces = ingest(store, "a.jpg", unit_vectors(2))
    again = store.add_image("/inbox/a.jpg", "/inbox", "sha-new", 2000, 456)
    assert again == image_id
    row = store.find_image_by_path("/inbox/a.jpg")
    assert (row.sha256, row.size, row.status) == ("sha-new", 2000, "pending")
    assert store.vectors()[0].size == 0
    new_faces = store.add_faces(image_id, faces_of(unit_vectors(1, seed=5)))
    assert store.vectors()[0].tolist() == new_faces and not set(new_faces) & set(old_faces)


def test_dedupe_by_sha_points_duplicates_at_the_original(store):
    original, faces = ingest(store, "a.jpg", unit_vectors(2), sha="same")
    copy_id = store.add_image("/inbox/copy of a.jpg", "/inbox", "same", 1000, 999)
    found = store.find_image_by_sha("same")
    assert found.id == original and store.find_image_by_sha("other") is None
    store.mark_duplicate(copy_id, found.id)
    copy = store.find_image_by_path("/inbox/copy of a.jpg")
    assert (copy.status, copy.duplicate_of) == ("duplicate", original)
    assert store.vectors()[0].tolist() == faces  # no second copy of the vectors
    assert store.image_is_current("/inbox/copy of a.jpg", 1000, 999)
    pending = store.add_image("/inbox/b.jpg", "/inbox", "fresh", 1, 1)
    assert store.find_image_by_sha("fresh") is None  # still pending: nothing to point at yet
    with pytest.raises(KeyError):
        store.mark_duplicate(copy_id, pending)
    store.set_image_status(pending, "done")
    assert store.find_image_by_sha("fresh").id == pending
    store.add_image("/inbox/a.jpg", "/inbox", "replaced", 5, 5)  # the original path, new content
    assert store.find_image_by_sha("same") is None
    copy = store.find_image_by_path("/inbox/copy of a.jpg")
    assert (copy.status, copy.duplicate_of) == ("pending", None)  # to be ingested on its own
    assert not store.image_is_current("/inbox/copy of a.jpg", 1000, 999)


def test_image_is_current_only_for_the_same_size_and_mtime_once_finished(store):
    image_id = store.add_image("/inbox/a.jpg", "/inbox", "s", 1000, 123)
    assert not store.image_is_current("/inbox/a.jpg", 1000, 123)  # pending: a crash mid-way
    store.add_faces(image_id, [])
    assert store.image_is_current("/inbox/a.jpg", 1000, 123)
    assert not store.image_is_current("/inbox/a.jpg", 1000, 124)
    assert not store.image_is_current("/inbox/a.jpg", 1001, 123)
    assert not store.image_is_current("/inbox/b.jpg", 1000, 123)


def test_a_broken_file_is_recorded_with_its_reason(store):
    store.record_error("/inbox/bad.jpg", "/inbox", None, 17, 5, "not an image (truncated JPEG)")
    row = store.find_image_by_path("/inbox/bad.jpg")
    assert (row.status, row.error, row.sha256) == ("error", "not an image (truncated JPEG)", None)
    assert not store.image_is_current("/inbox/bad.jpg", 17, 5)  # tried again if it is still there
    assert store.counts()["images"]["error"] == 1
    with pytest.raises(ValueError, match="status"):
        store.set_image_status(row.id, "lost")


def test_odd_file_names_round_trip(store):
    weird = Path("/inbox/caf\udce9 \u00e9t\u00e9 #1.jpg")  # an undecodable byte, as os.listdir gives it
    image_id = store.add_image(weird, "/inbox", "s", 1, 1)
    assert store.find_image_by_path(weird).path == weird
    assert store.find_image_by_path(weird).id == image_id


def test_bind_model_refuses_another_model_and_says_what_to_do(tmp_path):
    with Store.open(tmp_path) as store:
        store.bind_model(MODEL, DIM)
        ingest(store, "a.jpg", unit_vectors(3))
        store.bind_model(MODEL, DIM)  # the same model again is fine
    with Store.open(tmp_path) as store:
        with pytest.raises(StoreError) as err:
            store.bind_model("dlib-resnet-v1", 128)
        message = str(err.value)
        assert MODEL in message and "dlib-resnet-v1" in message and "3 vectors" in message
        assert "facesortd migrate --to dlib" in message and "embedder.name" in message
        with pytest.raises(StoreError):
            store.bind_model(MODEL, DIM * 2)
        assert store.counts()["model_id"] == MODEL


def test_faces_need_a_bound_model_of_the_right_size(tmp_path):
    with Store.open(tmp_path) as store:
        image_id = store.add_image("/inbox/a.jpg", "/inbox", "s", 1, 1)
        with pytest.raises(RuntimeError, match="bind_model"):
            store.add_faces(image_id, faces_of(unit_vectors(1)))
        store.bind_model(MODEL, DIM)
        with pytest.raises(ValueError, match="shape"):
            store.add_faces(image_id, faces_of(unit_vectors(1, dim=DIM + 1)))
        assert store.find_image_by_path("/inbox/a.jpg").status == "pending"
        assert store.counts()["faces"] == 0


def make_version_1_store(state_dir: Path) -> None:
    """A store as facesortd wrote it before migration 2 (the journal) existed."""
    state_dir.mkdir()
    conn = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO meta VALUES ('model_id', ?), ('dim', ?)", (MODEL, str(DIM)))
    conn.execute("INSERT INTO images (path, inbox, sha256, size, mtime_ns, status, created_at, "
                 "updated_at) VALUES ('/inbox/old.jpg', '/inbox', 'x', 5, 6, 'done', 0, 0)")
    conn.execute("INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, vector, "
                 "model_id, created_at) VALUES (1, 0, 0, 1, 1, 0.9, ?, ?, 0)",
                 (unit_vectors(1).tobytes(), MODEL))
    conn.close()


def test_an_older_store_is_migrated_and_keeps_its_data(tmp_path):
    make_version_1_store(tmp_path / "state")
    with Store.open(tmp_path / "state") as store:
        assert store.counts()["schema_version"] == SCHEMA_VERSION
        assert store.find_image_by_path("/inbox/old.jpg").status == "done"
        ids, matrix = store.vectors()
        assert ids.tolist() == [1] and matrix.tobytes() == unit_vectors(1).tobytes()
        store.bind_model(MODEL, DIM)
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
    conn.execute("INSERT INTO journal (op, src, dst, status, created_at, updated_at) "
                 "VALUES ('move', '/a', '/b', 'planned', 0, 0)")  # the new table exists
    conn.close()


def test_a_failed_migration_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    make_version_1_store(tmp_path / "state")

    def broken_step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("disk full")

    monkeypatch.setattr(store_schema, "MIGRATIONS", (MIGRATIONS[0], broken_step))
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
    with pytest.raises(RuntimeError, match="disk full"):
        store_schema.migrate(conn, target=2)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert store_schema.schema_version(conn) == 1 and "half_done" not in tables
    conn.close()
    monkeypatch.undo()
    with Store.open(tmp_path / "state") as store:  # the real code migrates it later
        assert store.counts()["schema_version"] == SCHEMA_VERSION


def test_a_newer_store_is_refused_with_both_versions(tmp_path):
    with Store.open(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    conn.close()
    with pytest.raises(StoreError) as err:
        Store.open(tmp_path)
    message = str(err.value)
    assert f"version {SCHEMA_VERSION + 3}" in message and f"up to {SCHEMA_VERSION}" in message
    assert "newer facesortd" in message


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use the store"):
        Store.open(tmp_path)


def test_the_matrix_grows_with_each_image_and_matches_the_db_after_reopen(tmp_path):
    all_vectors = unit_vectors(3000, seed=1)
    with Store.open(tmp_path) as store:
        store.bind_model(MODEL, DIM)
        held_ids, held_matrix = store.vectors()
        for i in range(0, 3000, 3):
            ingest(store, f"{i}.jpg", all_vectors[i : i + 3])
        ids, matrix = store.vectors()
        assert len(held_ids) == 0 and held_matrix.shape == (0, DIM)  # an old snapshot stays as it was
        assert not matrix.flags.writeable
        np.testing.assert_array_equal(matrix, all_vectors)
    with Store.open(tmp_path) as store:
        reopened_ids, reopened = store.vectors()
        np.testing.assert_array_equal(reopened_ids, ids)
        assert reopened.tobytes() == all_vectors.tobytes()
    with Store.open(tmp_path, load_vectors=False) as store:  # lazy: read on first use
        assert store.vectors()[1].tobytes() == all_vectors.tobytes()


def test_readers_in_another_thread_see_consistent_state_while_the_pipeline_writes(store):
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                ids, matrix = store.vectors()
                assert len(ids) == len(matrix) and len(ids) % 2 == 0
                store.counts()
                store.find_image_by_sha("sha-0.jpg")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, name=f"reader-{i}") for i in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            ingest(store, f"{i}.jpg", unit_vectors(2, seed=i))
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(store.vectors()[0]) == 400 and store.counts()["images"]["done"] == 200
