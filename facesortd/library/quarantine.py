"""Quarantine: broken files set aside in ``<library>/<placement.quarantine_dir>/``, each with a
``<name>.reason.txt`` saying where it came from and why, through the journal like any placement.

The pipeline records a broken file (an 'error' image) and hands it to ``set_aside``, which the app
wires in as ``Placer.quarantine`` (ingest sits below library and does not import it). The move is
a journal operation with reason 'quarantine': planned in a synced commit, done after, completed or
rolled back by ``Journal.replay`` after a crash, and taken back by ``facesortd undo``, which moves
the file back to its inbox, holds it there (``Store.image_is_current``: a held 'error' file is not
tried again until it changes) and retires the reason file. The reason file is a placement of kind
'reason'; ``repair()`` writes the ones a crash kept from being written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Optional

from facesortd import fsops
from facesortd.config import Config
from facesortd.library.journal import Journal, Op, content_id
from facesortd.store.database import Store, decode_path, encode_path

__all__ = ["REASON_SUFFIX", "repair", "set_aside"]

log = logging.getLogger("facesortd.quarantine")

REASON_SUFFIX = ".reason.txt"


def set_aside(config: Config, journal: Journal, image_id: int, path: Path,
              reason: str) -> Optional[Path]:
    """Move the broken file ``path`` (image ``image_id``, already recorded as an error with
    ``reason``) into the quarantine folder under a free name and write its reason file beside it.
    Returns where it went; None if it was gone. OSError if it could not be moved (it stays)."""
    try:
        sha = content_id(path)
    except FileNotFoundError:
        return None
    _detach(journal.store, image_id)
    folder = config.library / config.placement.quarantine_dir
    for name in fsops.candidate_names(path.name):
        dst = folder / name
        if os.path.lexists(dst):
            continue
        try:
            journal.execute(Op("move", path, dst, image_id, "main", sha, "quarantine", "move"))
        except FileExistsError:
            continue   # taken meanwhile: the next name
        _write_reason(journal.store, image_id, dst, _note(path, reason))
        return dst
    raise AssertionError("unreachable")


def repair(config: Config, store: Store) -> int:
    """After ``Journal.replay``: write the reason files of quarantined files a crash kept from
    getting one (between the move and the reason file). Returns how many."""
    folder = config.library / config.placement.quarantine_dir
    with store.read() as conn:
        rows = conn.execute(
            "SELECT p.image_id, p.path, i.path, i.error FROM placements p "
            "JOIN images i ON i.id = p.image_id WHERE p.kind = 'main' AND i.status = 'error' "
            "AND NOT EXISTS (SELECT 1 FROM placements r "
            "                WHERE r.image_id = p.image_id AND r.kind = 'reason')").fetchall()
    written = 0
    for image_id, placed, src, error in rows:
        placed = decode_path(placed)
        if placed.parent == folder and os.path.lexists(placed):
            _write_reason(store, image_id, placed, _note(decode_path(src), error or ""))
            written += 1
    return written


def _note(src: Path, reason: str) -> str:
    return f"{src}\n{reason}\n"


def _detach(store: Store, image_id: int) -> None:
    """A file quarantined at this inbox path is new content: the image's earlier files stay where
    they are, no longer its (as the placer does when an inbox path gets new content), and a hold
    that undo left on the path ends."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM placements WHERE image_id = ? AND kind = 'held'", (image_id,))
        conn.execute("UPDATE placements SET image_id = NULL WHERE image_id = ?", (image_id,))


def _write_reason(store: Store, image_id: int, placed: Path, text: str) -> Path:
    """Write ``<placed name>.reason.txt`` under a free name (through a synced temporary file, so
    it is never half written) and record it as the image's 'reason' placement. A reason file
    already there with exactly this text is ours from before a crash: it is taken as it is."""
    want = placed.with_name(placed.name + REASON_SUFFIX)
    data = text.encode()
    tmp = placed.with_name(f".facesortd-reason-{image_id}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)   # ours, from a crash while it was written
    try:
        same = not os.path.islink(want) and want.read_bytes() == data
    except OSError:
        same = False
    if same:
        final = want
    else:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        for name in fsops.candidate_names(want.name):
            try:
                fsops.rename_no_replace(tmp, want.with_name(name))
            except FileExistsError:
                continue
            final = want.with_name(name)
            break
        fsops.fsync_dir(placed.parent)
    now = time.time()
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO placements (image_id, path, kind, action, sha256, mtime_ns, created_at, "
            "updated_at) VALUES (?, ?, 'reason', 'write', ?, NULL, ?, ?)",
            (image_id, encode_path(final), hashlib.sha256(data).hexdigest(), now, now))
    return final
