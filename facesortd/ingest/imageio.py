"""Decoding image files into RGB arrays, without ever crashing the service.

Every way a file can fail (empty, truncated, not an image, a decompression bomb, unreadable,
vanished) becomes ``BadImage`` with a short reason, so the pipeline records the file and sets it
aside. Big photos are decoded near the size the detector needs (JPEG draft mode, then one good
downscale), and ``Decoded.scale`` maps coordinates back to the full-size, upright photo.

All functions are thread-safe: they touch no global Pillow settings.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from facesortd import fsops
from facesortd.errors import BadImage
from facesortd.formats import FORMATS, is_raw

__all__ = ["Decoded", "NoPreview", "decode", "decode_face_crop", "sha256_file", "shrink",
           "DEFAULT_MAX_PIXELS", "FORMATS"]

DEFAULT_MAX_PIXELS = 80_000_000


class NoPreview(BadImage):
    """A camera RAW file with no preview we can read (none embedded, and it cannot be developed).

    Not broken: the pipeline records it as a photo without a face, with this reason, and it goes
    to the no-face folder (a photographer's original is never quarantined)."""


# EXIF orientation -> the transpose that makes the photo upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Decoded:
    """An upright RGB uint8 image (H x W x 3, C-contiguous, read-only) and how it relates to the file.

    ``original_size`` is (width, height) of the full-resolution photo after EXIF orientation;
    ``scale`` = original width / decoded width, so ``x_original = x_decoded * scale``.
    """

    rgb: np.ndarray
    scale: float
    original_size: tuple[int, int]


def decode(path: Path, max_side: int | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode ``path`` upright to RGB, no side longer than ``max_side``; raise BadImage on failure
    (NoPreview for a camera RAW file whose preview cannot be read)."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be positive, not {max_side}")
    if is_raw(Path(path).name):
        return _raw_guarded(path, lambda f: _decode(_raw_preview(path, f, max_pixels), max_side,
                                                    max_pixels))
    return _guarded(path, lambda f: _decode(f, max_side, max_pixels))


def shrink(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy of ``rgb`` no side longer than ``max_side`` and the factor its pixels grew by
    (``rgb`` itself and 1.0 when it is small enough). An exact k x k mean when that lands within
    ``DRAFT_SLACK`` of the size asked for (a 2000 px copy becomes 1000 px for 1024), as JPEG draft
    would have decoded it; else a bilinear resize."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, 1.0
    im = Image.fromarray(np.ascontiguousarray(rgb))
    k = math.ceil(max(h, w) / max_side)
    if max(h, w) / k >= max_side * DRAFT_SLACK:
        out = im.reduce(k)
    else:
        ratio = max_side / max(h, w)
        out = im.resize((max(1, math.floor(w * ratio)), max(1, math.floor(h * ratio))),
                        Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(out), w / out.size[0]


def decode_face_crop(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file that is one face crop (aligned mode) straight to RGB uint8 size x size.

    The hot path of aligned mode: JPEG draft, then a single resize of the whole image (a
    non-square crop is stretched, as the old tool did). EXIF orientation is still applied. The
    array is read-only (Pillow's buffer, not copied); ``np.array(a)`` it to write into it.
    """
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    if is_raw(Path(path).name):
        return _raw_guarded(path, lambda f: _decode_crop(_raw_preview(path, f, max_pixels), size,
                                                         max_pixels))
    return _guarded(path, lambda f: _decode_crop(f, size, max_pixels))


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex SHA-256, byte count) of a file, read in 1 MiB chunks; BadImage if it cannot be read."""
    try:
        return fsops.sha256_and_size(path)
    except OSError as exc:
        raise BadImage(_os_reason(exc)) from exc


# --- the boundary: every exception becomes BadImage ---------------------------------------------

def _guarded(path: Path, work):
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise BadImage("empty file (0 bytes)")
            return work(f)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not a supported image (cannot identify the format; "
                       f"supported: {', '.join(FORMATS)})") from exc
    except OSError as exc:
        raise BadImage(_os_reason(exc)) from exc
    except MemoryError as exc:
        raise BadImage("out of memory while decoding") from exc
    except Exception as exc:  # Pillow plugins raise SyntaxError, ValueError, struct.error, ...
        raise BadImage(f"corrupt image ({type(exc).__name__}: {exc})") from exc


def _raw_guarded(path: Path, work):
    """``_guarded`` for a RAW file: whatever keeps its preview from being read is NoPreview."""
    try:
        return _guarded(path, work)
    except NoPreview:
        raise
    except BadImage as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise
        raise NoPreview(f"RAW file without a readable preview ({exc.reason})") from exc


# LibRaw's flip -> the transpose that makes its (unrotated) embedded preview upright
_RAW_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90,
             6: Image.Transpose.ROTATE_270}


def _raw_preview(path: Path, f: BinaryIO, max_pixels: int) -> BinaryIO:
    """A camera RAW's picture as an in-memory image file: its embedded preview (rawpy's
    ``extract_thumb``), else a half-size development. The preview is turned upright by LibRaw's
    flip unless it carries its own EXIF orientation; the development is upright already."""
    import rawpy  # imported on first use: the decoding processes that never see a RAW skip it

    try:
        raw = rawpy.imread(f)
    except rawpy.LibRawError as exc:
        raise NoPreview(f"RAW file without a readable preview (LibRaw: {_libraw(exc)})") from exc
    with raw:
        flip = raw.sizes.flip
        try:
            thumb = raw.extract_thumb()
        except (rawpy.LibRawError, rawpy.NotSupportedError):
            thumb = None
        out = io.BytesIO()
        if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
            with Image.open(io.BytesIO(thumb.data), formats=("JPEG",)) as im:
                if flip in _RAW_FLIP and _orientation(im) == 1:
                    im.load()
                    im.transpose(_RAW_FLIP[flip]).save(out, "PNG", compress_level=0)
                    out.seek(0)
                    return out
            return io.BytesIO(thumb.data)
        if thumb is not None and thumb.format == rawpy.ThumbFormat.BITMAP:
            im = Image.fromarray(np.ascontiguousarray(thumb.data))
            if flip in _RAW_FLIP:
                im = im.transpose(_RAW_FLIP[flip])
        else:
            w, h = raw.sizes.width, raw.sizes.height
            if w * h / 4 > max_pixels:
                raise BadImage(f"decompression bomb: a {w}x{h} RAW is over the pixel limit")
            try:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            except rawpy.LibRawError as exc:
                raise NoPreview("RAW file without a readable preview (no embedded preview, and "
                                f"it cannot be developed: LibRaw: {_libraw(exc)})") from exc
            im = Image.fromarray(rgb)
        im.save(out, "PNG", compress_level=0)
        out.seek(0)
        return out


def _libraw(exc: Exception) -> str:
    text = exc.args[0] if exc.args else exc
    return text.decode("ascii", "replace") if isinstance(text, bytes) else str(text or type(exc).__name__)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file vanished before it could be read"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if exc.errno is None:  # Pillow's own OSErrors: "image file is truncated", "broken data stream"
        return f"truncated or corrupt image data ({exc})"
    return f"cannot read the file ({type(exc).__name__}: {exc.strerror or exc})"


def _open(f: BinaryIO, max_pixels: int) -> Image.Image:
    """Open lazily and refuse a bomb from its header, before a single pixel is decoded."""
    im = Image.open(f, formats=FORMATS)
    w, h = im.size
    if w <= 0 or h <= 0:
        raise BadImage(f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise BadImage(f"decompression bomb: {w}x{h} is {w * h / 1e6:.1f} MP, "
                       f"over the limit of {max_pixels / 1e6:.1f} MP")
    if im.format in ("HEIF", "AVIF"):
        _check_boxes(f)
    return im


def _check_boxes(f: BinaryIO) -> None:
    """Refuse a HEIF/AVIF file cut short: libheif decodes a grid photo with tiles missing (grey)
    without an error, so the top-level ISO-BMFF boxes are walked and each must fit in the file."""
    end = os.fstat(f.fileno()).st_size if hasattr(f, "fileno") else None
    if end is None:
        return
    pos = f.tell()
    try:
        offset = 0
        while offset + 8 <= end:
            f.seek(offset)
            header = f.read(16)
            size = int.from_bytes(header[:4], "big")
            if size == 1 and len(header) == 16:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                return  # the last box runs to the end of the file
            if size < 8:
                raise BadImage(f"corrupt HEIF container (a box of {size} bytes at {offset})")
            if offset + size > end:
                raise BadImage(f"truncated file: its {header[4:8].decode('latin-1')!r} box needs "
                               f"{offset + size} bytes, the file has {end}")
            offset += size
    finally:
        f.seek(pos)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8); a damaged EXIF block is ignored rather than fatal."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value) if int(value) in _UPRIGHT else 1
    except Exception:
        return 1


#: ``decode(max_side=...)`` accepts a JPEG draft up to this much smaller than asked for and keeps
#: it as it is: a 4000x3000 photo with max_side 1024 decodes at 1/4 (1000x750, ~4x less work than
#: 1/2 at 2000x1500) and needs no resize at all.
DRAFT_SLACK = 0.95


def _draft(im: Image.Image, target: tuple[int, int]) -> None:
    # JPEG only: libjpeg decodes straight at 1/2, 1/4 or 1/8, never below ``target``.
    if im.format in ("JPEG", "MPO"):
        im.draft("RGB", target)


def _decode(f: BinaryIO, max_side: int | None, max_pixels: int) -> Decoded:
    with _open(f, max_pixels) as im:
        full_w, full_h = im.size
        if max_side is not None and max(full_w, full_h) > max_side:
            ratio = max_side / max(full_w, full_h)
            target = (max(1, math.floor(full_w * ratio)), max(1, math.floor(full_h * ratio)))
            _draft(im, (max(1, math.floor(target[0] * DRAFT_SLACK)),
                        max(1, math.floor(target[1] * DRAFT_SLACK))))
            if im.size[0] <= target[0] and im.size[1] <= target[1]:
                target = None  # the draft is within the slack: decode at its size, no resize
        else:
            target = None
        im.load()  # a truncated or corrupt file fails here
        orientation = _orientation(im)  # after load: PNG reads its eXIf chunk by loading
        out = _to_rgb(im, target)
    if orientation in _UPRIGHT:
        out = out.transpose(_UPRIGHT[orientation])
        if orientation >= 5:
            full_w, full_h = full_h, full_w
    rgb = _as_array(out)
    return Decoded(rgb=rgb, scale=full_w / rgb.shape[1], original_size=(full_w, full_h))


def _decode_crop(f: BinaryIO, size: int, max_pixels: int) -> np.ndarray:
    with _open(f, max_pixels) as im:
        _draft(im, (size, size))
        im.load()
        orientation = _orientation(im)
        out = _to_rgb(im, (size, size))
    if orientation in _UPRIGHT:
        out = out.transpose(_UPRIGHT[orientation])
    return _as_array(out)


# --- modes -------------------------------------------------------------------------------------

def _to_rgb(im: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """Any Pillow mode to RGB, resized to ``target`` (w, h) when given and different.

    Transparent pixels are composited on white: under alpha 0 a PNG may hold any colour (often
    black or garbage), and white is what a person sees in a viewer, so the face looks the same to
    the detector as to the reviewer. Resizing happens in the cheapest mode that resizes correctly
    (before the 3-channel expansion of greyscale, premultiplied for RGBA).
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = Image.fromarray(_wide_to_uint8(np.asarray(im)), "L")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "P" or mode == "PA":
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
    elif mode == "LA" or mode == "La":
        im = im.convert("RGBA")
    elif mode not in ("RGB", "L", "RGBA", "RGBa"):
        im = im.convert("RGB")  # CMYK (Adobe-inverted CMYK JPEGs are read right), YCbCr, LAB, HSV
    if target is not None and im.size != target:
        im = im.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if im.mode in ("RGBA", "RGBa"):
        if im.mode == "RGBa":
            im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB") if im.mode != "RGB" else im


def _wide_to_uint8(a: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float greyscale to 8 bits by its range, never clipped to white.

    Pillow's own conversion clips (every value above 255 becomes white). 16-bit data uses the
    full 0..65535 range; 32-bit integers holding only 8-bit values stay as they are; floats in
    0..1 are scaled to 0..255; anything else is stretched from its minimum to its maximum.
    """
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:
        return (a.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if a.dtype.kind == "f":
        if not (math.isfinite(lo) and math.isfinite(hi)):
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
            lo, hi = float(a.min()), float(a.max())
        if 0.0 <= lo and hi <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
    if 0 <= lo and hi <= 255:
        return a.astype(np.uint8)
    if 0 <= lo and hi <= 65535:
        return (a.astype(np.int64) * 255 // 65535).astype(np.uint8)
    span = (hi - lo) or 1.0
    return np.round((a.astype(np.float64) - lo) * (255.0 / span)).astype(np.uint8)


def _as_array(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:  # cannot happen after _to_rgb
        raise BadImage(f"decoded to an unexpected layout {a.shape} {a.dtype}")
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)
