"""Schema 6 on a store written before it: ``Store.open`` repairs the identities an old bug left
chained, cyclic and holding faces while merged, and the triggers then refuse such writes."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing

import numpy as np
import pytest

from facesortd.store import identity_rows
from facesortd.store import schema as store_schema
from facesortd.store.database import DB_NAME, Store


def v5_store(state_dir, identities, faces):
    """A store left at schema 5 (no triggers) with ``identities`` as (id, name, merged_into,
    created_at) rows and ``faces`` as identity ids (one face each, on one image)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    store_schema.migrate(conn, target=5)
    conn.execute("INSERT INTO meta (key, value) VALUES ('model_id', 'synthetic'), ('dim', '4')")
    conn.execute("INSERT INTO images (id, path, inbox, sha256, size, mtime_ns, status, created_at, "
                 "updated_at) VALUES (1, '/inbox/a.jpg', '/inbox', 'aa', 1, 1, 'done', 0, 0)")
    conn.executemany("INSERT INTO identities (id, name, merged_into, created_at) VALUES "
                     "(?, ?, ?, ?)", identities)
    vector = np.ones(4, np.float32).tobytes()
    conn.executemany("INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, vector, "
                     "model_id, identity_id, created_at) VALUES (1, 0, 0, 1, 1, 0.9, ?, "
                     "'synthetic', ?, 0)", [(vector, i) for i in faces])
    assert store_schema.schema_version(conn) == 5
    conn.close()


def rows(store) -> dict[int, int | None]:
    with store.read() as conn:
        return dict(conn.execute("SELECT id, merged_into FROM identities"))


def test_open_repairs_chains_cycles_and_faces_on_merged_identities(tmp_path, caplog):
    v5_store(tmp_path, identities=[
        # faces on merged identities that chain 1 -> 2 -> 3 (live)
        (1, None, 2, 10.0), (2, None, 3, 11.0), (3, None, None, 12.0),
        # a pure cycle 4 -> 5 -> 6 -> 4 holding no face; 5 was named
        (4, None, 5, 1.0), (5, "Ann", 6, 20.0), (6, None, 4, 21.0),
        # an unnamed cycle 7 -> 8 -> 9 -> 7: 8 is the oldest, though not the lowest id
        (7, None, 8, 31.0), (8, None, 9, 30.0), (9, None, 7, 32.0),
        # a chain with no face 10 -> 11 -> 12 -> 13 (live), and a pointer at nothing
        (10, None, 11, 40.0), (11, None, 12, 41.0), (12, None, 13, 42.0), (13, None, None, 43.0),
        (14, None, 99, 50.0),
        # a cycle through an identity that holds faces: 15 -> 16 -> 15, faces on 16
        (15, None, 16, 60.0), (16, None, 15, 61.0),
    ], faces=[1, 1, 2, 3, 16, 16, None])
    with closing(sqlite3.connect(tmp_path / DB_NAME)) as conn:
        before = identity_rows.check(conn)
    assert before == identity_rows.Problems(faces_on_merged=5, merged_holding_faces=3,
                                            chained=11, in_cycles=8, dangling=1)

    with caplog.at_level(logging.WARNING, logger="facesortd.identities"):
        store = Store.open(tmp_path, load_vectors=False)
    with store:
        with store.read() as conn:
            assert identity_rows.check(conn).total == 0
            assert store_schema.schema_version(conn) == store_schema.SCHEMA_VERSION
        into = rows(store)
        # identities that hold faces are live again: the people they hold stay apart
        assert into[1] is None and into[2] is None and into[3] is None and into[16] is None
        assert into[15] == 16
        # a pure cycle keeps its named identity, else its oldest; the rest point straight at it
        assert into[5] is None and into[4] == 5 and into[6] == 5
        assert into[8] is None and into[7] == 8 and into[9] == 8
        # chains point straight at their live end; a pointer at nothing is cleared
        assert into[10] == 13 and into[11] == 13 and into[12] == 13 and into[13] is None
        assert into[14] is None
        with store.read() as conn:
            counts = dict(conn.execute("SELECT identity_id, COUNT(*) FROM faces "
                                       "WHERE identity_id IS NOT NULL GROUP BY identity_id"))
        assert counts == {1: 2, 2: 1, 3: 1, 16: 2}, "faces stay where they were"
    repaired = [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()]
    assert len(repaired) == 1 and "cycles_broken 2" in repaired[0], repaired

    with Store.open(tmp_path, load_vectors=False) as store:   # a second start changes nothing
        assert rows(store) == into


def test_the_triggers_of_a_migrated_store_refuse_what_the_old_bug_wrote(tmp_path):
    v5_store(tmp_path, identities=[(1, None, 2, 1.0), (2, None, None, 2.0), (3, None, None, 3.0)],
             faces=[3])
    with Store.open(tmp_path, load_vectors=False) as store:
        refused = [
            ("UPDATE faces SET identity_id = 1", ()),                                # onto merged
            (("INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, vector, "
              "model_id, identity_id, created_at) VALUES (1, 0, 0, 1, 1, 1, x'00', 's', 1, 0)"), ()),
            ("UPDATE identities SET merged_into = 1 WHERE id = 3", ()),              # a chain
            ("UPDATE identities SET merged_into = 3 WHERE id = 2", ()),              # 1 points at 2
            ("UPDATE identities SET merged_into = 2 WHERE id = 3", ()),              # 3 holds a face
        ]
        for sql, args in refused:
            with pytest.raises(sqlite3.IntegrityError, match="facesortd"), \
                    store.transaction() as conn:
                conn.execute(sql, args)
        assert rows(store) == {1: 2, 2: None, 3: None}
