"""Which files are photos: the Pillow decoders facesortd runs, HEIF/AVIF registered, RAW names.

Importing this module registers pillow-heif's HEIF opener with Pillow once per process, so every
``Image.open`` here (decoding, capture dates, thumbnails, the review page) reads HEIC as it reads
JPEG. AVIF is read by Pillow's own plugin where the installed Pillow was built with libavif
(``AVIF_READABLE``); pillow-heif 1.x no longer reads it.
"""

from __future__ import annotations

import logging

from PIL import Image, features

log = logging.getLogger("facesortd.formats")

try:
    import pillow_heif
except ImportError:  # a declared dependency; without it HEIC files are "not a supported image"
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()

HEIF_READABLE = pillow_heif is not None and "HEIF" in Image.OPEN
AVIF_READABLE = bool(features.check("avif")) if hasattr(features, "check") else False

# Only these decoders run. Pillow can identify more (EPS would call Ghostscript, for one); a file
# in any other format is "not a supported image", whatever its name says. (Camera MPO files
# open through the JPEG entry.)
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "PPM") \
    + (("HEIF",) if HEIF_READABLE else ()) + (("AVIF",) if AVIF_READABLE else ())

#: Camera RAW files: analysed on their embedded preview when alone, a companion of their
#: JPEG/HEIC twin otherwise.
RAW_EXTENSIONS: tuple[str, ...] = (".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2",
                                   ".nrw", ".pef", ".srw", ".rwl", ".3fr", ".iiq", ".erf")

#: Formats a browser cannot be relied on to show: the review page sends a JPEG copy instead.
BROWSER_UNSAFE = frozenset({"HEIF"})


def is_raw(name: str) -> bool:
    """Whether a file name is a camera RAW's (by its extension, any case)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in RAW_EXTENSIONS


def extension(name: str) -> str:
    """A file name's last extension, lower case with its dot ('' when it has none)."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def companion_suffix(photo_name: str, name: str) -> str | None:
    """What follows the photo's stem in a companion's name (``.CR3``, ``.xmp``, ``.JPG.json``),
    or None when ``name`` is not named after the photo: a companion is ``stem.*`` (which takes in
    ``stem.ext.*``) beside ``stem.ext``."""
    dot = photo_name.rfind(".")
    stem = photo_name[:dot] if dot > 0 else photo_name
    if name != photo_name and name.startswith(stem + "."):
        return name[len(stem):]
    return None


def stems(photos) -> dict[str, str]:
    """Photo names by stem (the first name in order where two photos share one), for ``owner``."""
    out: dict[str, str] = {}
    for photo in sorted(photos):
        dot = photo.rfind(".")
        out.setdefault(photo[:dot] if dot > 0 else photo, photo)
    return out


def owner(name: str, photos) -> str | None:
    """The photo that ``name`` is a companion of, among ``photos`` (names in the same folder, or
    their ``stems()``): the one with the longest stem (``a.b.jpg`` over ``a.jpg`` for
    ``a.b.xmp``), then the first name."""
    by_stem = photos if isinstance(photos, dict) else stems(photos)
    i = len(name)
    while True:
        i = name.rfind(".", 0, i)
        if i <= 0:
            return None
        photo = by_stem.get(name[:i])
        if photo is not None and photo != name:
            return photo
