"""The store's tables, as an ordered list of forward migrations.

The schema version lives in SQLite's ``PRAGMA user_version``: 0 is an empty file, version N is
reached by running steps 1..N in order. To change the schema, append a step to ``MIGRATIONS``; never
edit a step that has shipped, since stores in the field have already run it. All pending steps run
in one transaction; ``PRAGMA foreign_keys`` cannot change inside it, so a step that rebuilds a
table should use ``PRAGMA defer_foreign_keys = ON``.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Sequence

Step = Callable[[sqlite3.Connection], None]


def _sql(*statements: str) -> Step:
    """A step made of plain DDL statements (run one by one: ``executescript`` would commit)."""

    def step(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return step


# Version 1: images, faces and identities with the user's constraints.
# Ids are AUTOINCREMENT so that an id is never reused: thumbnails, web pages and identity folders
# refer to faces and identities by id. Timestamps are unix seconds (REAL). Status values are
# checked in store.py, not by CHECK constraints, so that a later migration can add one without
# rebuilding the table.
_V1 = _sql(
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE images (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        path       TEXT NOT NULL UNIQUE,
        inbox      TEXT NOT NULL,
        sha256     TEXT,
        size       INTEGER NOT NULL,
        mtime_ns   INTEGER NOT NULL,
        status     TEXT NOT NULL DEFAULT 'pending',
        error      TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX images_sha256 ON images(sha256)",
    "CREATE INDEX images_status ON images(status)",
    """CREATE TABLE identities (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        name        TEXT,
        merged_into INTEGER REFERENCES identities(id) ON DELETE SET NULL,
        created_at  REAL NOT NULL
    )""",
    """CREATE TABLE faces (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id    INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        box_x1      REAL NOT NULL,
        box_y1      REAL NOT NULL,
        box_x2      REAL NOT NULL,
        box_y2      REAL NOT NULL,
        score       REAL NOT NULL,
        vector      BLOB NOT NULL,
        model_id    TEXT NOT NULL,
        identity_id INTEGER REFERENCES identities(id) ON DELETE SET NULL,
        pinned      INTEGER NOT NULL DEFAULT 0,
        rejected    INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL
    )""",
    "CREATE INDEX faces_image ON faces(image_id)",
    # (identity_id, rejected) keeps counts() off the big vector pages
    "CREATE INDEX faces_identity ON faces(identity_id, rejected)",
    """CREATE TABLE cannot_link (
        face_id     INTEGER NOT NULL REFERENCES faces(id) ON DELETE CASCADE,
        identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        PRIMARY KEY (face_id, identity_id)
    )""",
    """CREATE TABLE suggestions (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        a        INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        b        INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        distance REAL NOT NULL,
        status   TEXT NOT NULL DEFAULT 'open'
    )""",
)

# Version 2: the journal of file operations (the placer writes a row before it touches a file and
# updates it after, so a crash at any instant can be repaired at the next start).
_V2 = _sql(
    """CREATE TABLE journal (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        op         TEXT NOT NULL,
        src        TEXT NOT NULL,
        dst        TEXT,
        status     TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX journal_status ON journal(status)",
)

# Version 3: a file whose content was already ingested points at that image instead of carrying
# copies of its faces (identical vectors would look like a cluster of one person on their own).
_V3 = _sql(
    "ALTER TABLE images ADD COLUMN duplicate_of INTEGER REFERENCES images(id)",
    "CREATE INDEX images_duplicate_of ON images(duplicate_of)",
)

# Version 4: identities. ``face_edges`` is the eps-neighbour graph, extended as each face is
# assigned, so a recluster need not compare every pair (a < b; the radius is in meta
# 'graph_radius', the highest face id whose edges are all in it in 'graph_upto').
# ``history`` records each correction with what it changed, so ``undo`` can restore it.
_V4 = _sql(
    """CREATE TABLE face_edges (
        a INTEGER NOT NULL,
        b INTEGER NOT NULL,
        d REAL NOT NULL,
        PRIMARY KEY (a, b)
    ) WITHOUT ROWID""",
    """CREATE TABLE history (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        op         TEXT NOT NULL,
        payload    TEXT NOT NULL,
        created_at REAL NOT NULL,
        undone     INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX suggestions_pair ON suggestions(a, b)",
)

# Version 5: where the placer put each image's file(s) in the library ('main' is the file itself
# for action move, else the copy/link; 'extra' are multi_face=all links; 'held' marks an image
# that undo put back and the placer must leave alone; 'gone' a placed file someone moved away),
# the journal's link to them, and each image's capture date for {year}/{month}/{day}.
_V5 = _sql(
    """CREATE TABLE placements (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id   INTEGER REFERENCES images(id) ON DELETE SET NULL,
        path       TEXT NOT NULL,
        kind       TEXT NOT NULL,
        action     TEXT NOT NULL,
        sha256     TEXT,
        mtime_ns   INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX placements_image ON placements(image_id)",
    "CREATE INDEX placements_path ON placements(path)",
    "ALTER TABLE journal ADD COLUMN image_id INTEGER",
    "ALTER TABLE journal ADD COLUMN kind TEXT",
    "ALTER TABLE journal ADD COLUMN sha256 TEXT",
    "ALTER TABLE journal ADD COLUMN reason TEXT",
    "ALTER TABLE journal ADD COLUMN error TEXT",
    """CREATE TABLE image_dates (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        sha256   TEXT,
        taken    TEXT NOT NULL
    )""",
)


# Version 6: the identities' invariants (``identity_rows``) are enforced by the store itself: a
# face is never given to a merged identity; ``merged_into`` points straight at a live identity
# (never at itself, at a merged one, or from an identity that still holds faces or that others
# point at). Stores written before are repaired first (chains and cycles of merges that an old
# bug made at library scale).
_TRIGGERS = (
    """CREATE TRIGGER faces_live_identity_insert BEFORE INSERT ON faces
       WHEN NEW.identity_id IS NOT NULL
        AND (SELECT merged_into FROM identities WHERE id = NEW.identity_id) IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'facesortd: a face cannot be given to a merged identity'); END""",
    """CREATE TRIGGER faces_live_identity_update BEFORE UPDATE OF identity_id ON faces
       WHEN NEW.identity_id IS NOT NULL
        AND (SELECT merged_into FROM identities WHERE id = NEW.identity_id) IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'facesortd: a face cannot be given to a merged identity'); END""",
    """CREATE TRIGGER identities_merge_straight BEFORE UPDATE OF merged_into ON identities
       WHEN NEW.merged_into IS NOT NULL AND (
            NEW.merged_into = NEW.id
         OR NOT EXISTS (SELECT 1 FROM identities WHERE id = NEW.merged_into AND merged_into IS NULL)
         OR EXISTS (SELECT 1 FROM identities WHERE merged_into = NEW.id)
         OR EXISTS (SELECT 1 FROM faces WHERE identity_id = NEW.id))
       BEGIN SELECT RAISE(ABORT, 'facesortd: merged_into must point straight at a live identity, from one that holds no face and that no identity points at'); END""",
    """CREATE TRIGGER identities_insert_live BEFORE INSERT ON identities
       WHEN NEW.merged_into IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'facesortd: a new identity cannot be a merged one'); END""",
)


def _v6(conn: sqlite3.Connection) -> None:
    from facesortd.store.identity_rows import repair

    conn.execute("CREATE INDEX IF NOT EXISTS identities_merged_into ON identities(merged_into)")
    repair(conn)
    for statement in _TRIGGERS:
        conn.execute(statement)


# Version 7: ``facesortd migrate`` re-embeds every face with another model beside the vectors in
# force: one row per face and target model, never read by a search (NULL vector: the face's photo
# was gone, and the face is dropped when the store switches). A face deleted meanwhile (its file
# replaced while the daemon ran on the old model) takes its row with it.
_V7 = _sql(
    """CREATE TABLE staged_vectors (
        face_id  INTEGER NOT NULL REFERENCES faces(id) ON DELETE CASCADE,
        model_id TEXT NOT NULL,
        vector   BLOB,
        PRIMARY KEY (face_id, model_id)
    )""",
)


# Version 8: review at scale (issue 18). ``face_doubt`` holds, for each assigned face, how likely
# its person is wrong (``people.doubt``: its distance to its own person against the nearest other
# person, written by assignment and recluster) and that other person, the review queue's
# candidate; advisory, so it cascades with the face and may lag a correction (the queue filters
# pinned faces). ``identities.hidden``: a person hidden by a correction (strangers, a poster):
# off the overview and the review queue, and placed as if its faces were not there.
_V8 = _sql(
    """CREATE TABLE face_doubt (
        face_id   INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
        score     REAL NOT NULL,
        candidate INTEGER
    )""",
    "CREATE INDEX face_doubt_score ON face_doubt(score)",
    "ALTER TABLE identities ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0",
)


# Version 9: the library as a second way to correct (library/scan.py). ``images.removed_at``: a
# placed photo a person deleted from the library (never placed again, its faces out of the
# clustering; the same content dropped into an inbox later is a new arrival). ``library_hashes``:
# the sha256 of files in the library that no placement row tracks, by path, size and mtime, so a
# scan hashes a file again only when it changed.
_V9 = _sql(
    "ALTER TABLE images ADD COLUMN removed_at REAL",
    """CREATE TABLE library_hashes (
        path     TEXT PRIMARY KEY,
        size     INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256   TEXT NOT NULL
    )""",
)


# Version 10: ``placements.chosen_name``: the file name a person gave a placed photo in the library
# (renamed in a file manager, library/scan.py); the placer keeps it, also when the photo follows its
# person to another folder, instead of renaming it back to the layout's name.
_V10 = _sql("ALTER TABLE placements ADD COLUMN chosen_name TEXT")


MIGRATIONS: Sequence[Step] = (_V1, _V2, _V3, _V4, _V5, _v6, _V7, _V8, _V9, _V10)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Run the steps from the file's version up to ``target`` in one transaction.

    Returns (version before, version after). The caller refuses files newer than the code; this
    function only moves forward. ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    conn.execute("BEGIN IMMEDIATE")  # takes the write lock first: two processes cannot both migrate
    try:
        before = schema_version(conn)
        for version in range(before + 1, target + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before, max(before, target)
