"""Store rows without the model: ``fabricate`` records a real file as ingested (its real sha256,
size and mtime) with made-up faces, which is all the placer reads.

The placement tests get these through the ``fake_ingest`` fixture (tests/conftest.py); the crash
test's driver (tests/e2e/placer_driver.py), a separate program, imports them itself. Test modules
do not import this module.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MODEL, DIM = "test-model", 4


def open_store(config):
    from facesortd.store.database import Store

    store = Store.open(config.state_dir)
    store.bind_model(MODEL, DIM)
    return store


def new_identity(store, name: Optional[str] = None) -> int:
    with store.transaction() as conn:
        return conn.execute("INSERT INTO identities (name, created_at) VALUES (?, ?)",
                            (name, time.time())).lastrowid


def fabricate(store, path: Path, inbox: Path, identities: Sequence[Optional[int]] = (),
              areas: Optional[Sequence[float]] = None) -> int:
    """Record ``path`` as ingested with one face per entry of ``identities`` (None: unassigned);
    with no entries it is a 'noface' image; with content seen before, a duplicate."""
    from facesortd.ingest.imageio import sha256_file

    sha, size = sha256_file(path)
    st = path.stat()
    original = store.find_image_by_sha(sha)
    image_id = store.add_image(path, inbox, sha, size, st.st_mtime_ns, status="pending")
    if original is not None and original.id != image_id:
        store.mark_duplicate(image_id, original.id)
        return image_id
    areas = areas or [10.0 * (len(identities) - i) for i in range(len(identities))]
    faces = [((0.0, 0.0, float(a), 1.0), 0.99, np.full(DIM, 0.5, np.float32)) for a in areas]
    face_ids = store.add_faces(image_id, faces)
    with store.transaction() as conn:
        conn.executemany("UPDATE faces SET identity_id = ? WHERE id = ?",
                         list(zip(identities, face_ids)))
    return image_id
