"""Finding placed files a person moved: a missing placement row's file among the library's files
that no row tracks, by size, then sha256 (a symlink by its target); a companion by its name,
beside its photo's new place first. A file is hashed only when its size is the size of a missing
photo (or its name a missing companion's), and then once: ``library_hashes`` caches it by path,
size and mtime."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from facesortd import fsops
from facesortd.library.journal import SYMLINK
from facesortd.store.database import Store, decode_path, encode_path
from facesortd.store.sql import in_chunks

__all__ = ["SYMLINK", "Row", "Image", "match", "prune_cache"]


@dataclass(frozen=True)
class Row:
    """A placement row the scan looks for (tracked, or gone)."""

    id: int
    image_id: int
    path: Path
    kind: str
    action: str
    sha256: Optional[str]

    @classmethod
    def of(cls, r: tuple) -> "Row":
        """A row as scan.py's queries read it: (id, image id, path as text, kind, action, sha256,
        ...)."""
        return cls(r[0], r[1], Path(r[2]), *r[3:6])


@dataclass(frozen=True)
class Image:
    """What the scan needs of a row's image."""

    id: int
    sha256: Optional[str]
    size: int
    status: str
    duplicate_of: Optional[int]
    removed: bool
    path: Path


def match(store: Store, missing: list[Row], untracked: list[Path], images: dict[int, Image],
          dry_run: bool) -> tuple[dict[int, Path], int]:
    """Row id -> the untracked file that holds its content: photos (main, extra) by size and
    sha256, preferring their own name; then companions, beside their photo's new place first.
    With it, how many files were hashed (not in the cache, or changed since)."""
    found: dict[int, Path] = {}
    hashed = 0
    if not untracked:
        return found, hashed
    stats: dict[Path, os.stat_result] = {}
    for path in untracked:
        try:
            stats[path] = os.lstat(path)
        except OSError:
            pass
    sizes = {images[r.image_id].size for r in missing if r.kind != "companion"
             and r.image_id in images}
    names = {r.path.name for r in missing if r.kind == "companion"}
    claimed: set[Path] = set()
    fresh: list[tuple] = []   # hashes to cache, written in one transaction at the end
    cache = _cache(store, [p for p, st in stats.items()
                           if stat.S_ISREG(st.st_mode) and (st.st_size in sizes or p.name in names)])

    def key(path: Path) -> Optional[str]:
        nonlocal hashed
        st = stats.get(path)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                return SYMLINK + os.readlink(path)
            except OSError:
                return None
        if not stat.S_ISREG(st.st_mode):
            return None
        hit = cache.get(path)
        if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        try:
            sha = fsops.sha256_of(path)
        except OSError:
            return None
        hashed += 1
        cache[path] = (st.st_size, st.st_mtime_ns, sha)
        fresh.append((encode_path(path), st.st_size, st.st_mtime_ns, sha))
        return sha

    def sized(path: Path, size: int) -> bool:
        st = stats.get(path)
        return st is not None and (stat.S_ISLNK(st.st_mode) or st.st_size == size)

    for row in sorted((r for r in missing if r.kind != "companion"), key=lambda r: str(r.path)):
        image = images.get(row.image_id)
        if image is None:
            continue
        want = {row.sha256, image.sha256, SYMLINK + os.path.abspath(image.path)} - {None}
        pool = [p for p in untracked if p not in claimed and sized(p, image.size)]
        pool.sort(key=lambda p: p.name != row.path.name)   # its own name first
        for path in pool:
            if key(path) in want:
                found[row.id] = path
                claimed.add(path)
                break
    companions = {r.image_id for r in missing if r.kind == "companion"}
    main_at = {image_id: found.get(row_id, path)
               for row_id, image_id, path in _mains(store, companions)}
    for row in (r for r in missing if r.kind == "companion"):
        beside = main_at.get(row.image_id, row.path).parent / row.path.name
        pool = [p for p in untracked if p not in claimed and p.name == row.path.name]
        pool.sort(key=lambda p: p != beside)
        for path in pool:
            if row.sha256 is not None and key(path) == row.sha256:
                found[row.id] = path
                claimed.add(path)
                break
    if fresh and not dry_run:
        with store.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO library_hashes (path, size, mtime_ns, "
                             "sha256) VALUES (?, ?, ?, ?)", fresh)
    return found, hashed

def _mains(store: Store, ids: set[int]) -> list[tuple[int, int, Path]]:
    """(row id, image id, path) of the main placement rows of images ``ids`` (and their gone
    rows: a gone photo's companions are looked for beside it first)."""
    out = []
    with store.read() as conn:
        for marks, part in in_chunks(sorted(ids)):
            out += [(r[0], r[1], decode_path(r[2])) for r in conn.execute(
                f"SELECT id, image_id, path FROM placements WHERE kind IN ('main', 'gone') "
                f"AND image_id IN ({marks})", part)]
    return out

def _cache(store: Store, paths: list[Path]) -> dict[Path, tuple[int, int, str]]:
    out: dict[Path, tuple[int, int, str]] = {}
    enc = [encode_path(p) for p in paths]
    with store.read() as conn:
        for marks, part in in_chunks(enc):
            for path, size, mtime_ns, sha in conn.execute(
                    f"SELECT path, size, mtime_ns, sha256 FROM library_hashes "
                    f"WHERE path IN ({marks})", part):
                out[decode_path(path)] = (size, mtime_ns, sha)
    return out

def prune_cache(store: Store, seen: set[str]) -> None:
    """Drop the cached hashes of files no longer in the library (``seen``: all of its files)."""
    with store.read() as conn:
        stale = [r[0] for r in conn.execute("SELECT path FROM library_hashes")
                 if os.fsdecode(r[0]) not in seen]
    if stale:
        with store.transaction() as conn:
            conn.executemany("DELETE FROM library_hashes WHERE path = ?", [(p,) for p in stale])
