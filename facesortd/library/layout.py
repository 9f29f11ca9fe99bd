"""Where an image belongs: the ``placement`` layout turned into paths relative to the library.

Pure functions of store rows (and, for ``{year}/{month}/{day}``, the photo's EXIF date), so the
placer can compare what should be with what is.
"""

from __future__ import annotations

import os
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from facesortd.config import PlacementConfig
from facesortd.formats import FORMATS

_UNSAFE = re.compile(r"[/\\\x00]")


@dataclass(frozen=True)
class Folder:
    """A destination folder value: a person's folder name, or one of the special folders."""

    name: str
    special: bool = False


def identity_folder(identity_id: int, name: Optional[str]) -> Folder:
    """The identity's name once a person gave one (made safe as one folder name), else
    ``Person_0001``-style from its id."""
    if name:
        safe = _UNSAFE.sub("_", name).strip().lstrip(".")
        if safe:
            return Folder(safe)
    return Folder(f"Person_{identity_id:04d}")


def identity_folders(names: dict[int, Optional[str]], reserved: Iterable[str] = ()) -> dict[int, Folder]:
    """One folder per live identity (``names``: id -> name or None), never the same folder for two
    identities: two people a person gave the same name (compared without case, as some file systems
    do), a name that looks like another identity's ``Person_0007``, or a special folder's name. The
    oldest identity keeps the plain name; the others get `` (#id)`` after it."""
    taken = {r.casefold() for r in reserved}
    out: dict[int, Folder] = {}
    # identities named ``Person_0007``-style by their id first (that name is theirs alone), then
    # the named ones, oldest first
    def own_name(i: int) -> bool:
        return identity_folder(i, names[i]).name == f"Person_{i:04d}"

    order = sorted(names, key=lambda i: (not own_name(i), i))
    for identity in order:
        folder = identity_folder(identity, names[identity])
        name, n = folder.name, 1
        while name.casefold() in taken:
            name = f"{folder.name} (#{identity})" if n == 1 else f"{folder.name} (#{identity}-{n})"
            n += 1
        taken.add(name.casefold())
        out[identity] = Folder(name)
    return out


def layout_fields(layout: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(layout) if f}


def render(pc: PlacementConfig, folder: Folder, original: Path, inbox: Path,
           date: Optional[tuple[str, str, str]] = None) -> Path:
    """The layout for one file in one folder. A special folder (``_unsorted``...) takes the place
    of ``{identity}``; a layout without ``{identity}`` puts special files under that folder."""
    name, ext = os.path.splitext(original.name)
    year, month, day = date or ("0000", "00", "00")
    rel = pc.layout.format(identity=folder.name, name=name, ext=ext, inbox=inbox.name or "inbox",
                           year=year, month=month, day=day)
    parts = [p for p in Path(rel).parts if p not in ("", ".", "..", "/")]
    if folder.special and "identity" not in layout_fields(pc.layout):
        parts.insert(0, folder.name)
    return Path(*parts)


def is_candidate(name: str, wanted: str) -> bool:
    """True if ``name`` is ``wanted`` or one of its rename_new variants (``stem_N.ext``)."""
    if name == wanted:
        return True
    stem, ext = os.path.splitext(wanted)
    return re.fullmatch(re.escape(stem) + r"_\d+" + re.escape(ext), name) is not None


def photo_date(path: Path, mtime_ns: int) -> tuple[str, str, str]:
    """(year, month, day) from EXIF DateTimeOriginal, else DateTime, else the file's mtime."""
    try:
        from PIL import Image

        with Image.open(path, formats=FORMATS) as im:   # HEIC's EXIF too
            exif = im.getexif()
            value = exif.get_ifd(0x8769).get(36867) or exif.get(306)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        m = re.match(r"\s*(\d{4})[:\-](\d{2})[:\-](\d{2})", str(value or ""))
        if m and m.group(1) != "0000" and 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31:
            return m.group(1), m.group(2), m.group(3)
    except Exception:  # any unreadable EXIF: fall back to the mtime
        pass
    t = time.localtime(mtime_ns / 1e9)
    return f"{t.tm_year:04d}", f"{t.tm_mon:02d}", f"{t.tm_mday:02d}"
