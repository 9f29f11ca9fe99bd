"""Companion files: what travels with a photo (``watch.companions``), and under which names.

A photo's group is the photo and every file in its folder named ``stem.*`` (``stem.ext.*`` too)
whose extension is a companion's: the RAW twin of a JPEG (``IMG_1.CR3``), XMP sidecars
(``IMG_1.xmp``, ``IMG_1.CR3.xmp``), iPhone edits (``IMG_1.AAE``), the Live Photo video
(``IMG_1.MOV``), Google Takeout metadata (``IMG_1.JPG.json``), ``.THM`` thumbnails. A companion
keeps what follows the stem (its *suffix*) and takes the stem of its photo's current name, so a
group renamed by ``rename_new`` stays one group (``IMG_1_1.JPG``, ``IMG_1_1.CR3``). Pure
functions of names and one store read; the placer turns them into journaled operations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from facesortd.config import WatchConfig
from facesortd.formats import companion_suffix, extension, owner, stems
from facesortd.store.database import STATUSES, Store

__all__ = ["Listing", "beside", "listing", "of", "suffix"]


@dataclass(frozen=True)
class Listing:
    """An inbox folder as the placer saw it once per sync: the names there that are no image of
    the store's (companion candidates) by each stem they could belong to (``a.b.xmp`` under
    ``a`` and ``a.b``), and the names photos have or had there."""

    by_stem: dict[str, list[str]]
    photos: dict[str, str]        # formats.stems() of the photos


def listing(folder: Path, store: Store, watch: WatchConfig) -> Listing:
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    images = {row.path.name for row in store.images_in_folder(folder, *STATUSES)
              if row.path.parent == folder}
    photos = images | {n for n in names if extension(n) in watch.extensions}
    by_stem: dict[str, list[str]] = {}
    for name in sorted(names):
        if name in images or extension(name) not in watch.companions:
            continue
        for i, c in enumerate(name):
            if c == "." and i > 0:
                by_stem.setdefault(name[:i], []).append(name)
    return Listing(by_stem, stems(photos))


def of(photo_name: str, found: Listing, watch: WatchConfig) -> list[tuple[str, str]]:
    """(name, suffix) of each companion of ``photo_name`` in the folder: a companion extension,
    named after this photo and not after a photo there with a longer stem."""
    out = []
    for name in found.by_stem.get(os.path.splitext(photo_name)[0], ()):
        if extension(name) not in watch.companions:
            continue
        tail = companion_suffix(photo_name, name)
        if tail is not None and owner(name, found.photos) in (photo_name, None):
            out.append((name, tail))
    return out


def suffix(name: str, photo_at: Path, original: Path) -> str:
    """A placed companion's suffix: what follows the stem of its photo's name where it was
    placed, else of its inbox name, else everything from its first dot."""
    for photo in (photo_at, original):
        tail = companion_suffix(photo.name, name)
        if tail is not None:
            return tail
    dot = name.find(".")
    return name[dot:] if dot > 0 else "." + name


def beside(photo: Path, tail: str) -> Path:
    """Where the companion with ``tail`` goes beside ``photo``: the photo's stem, its suffix."""
    return photo.with_name(os.path.splitext(photo.name)[0] + tail)
