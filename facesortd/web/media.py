"""``/thumb/<face_id>.jpg`` and ``/image/<image_id>``: pictures served by id, never by path.

A thumbnail is the face box (with a margin, made square) cut from the photo wherever the photo is
now (its placement, else its inbox path), made on first request and kept in
``<state_dir>/thumbs/``. A face id is never reused and a face's box never changes, so a cached
thumbnail is valid for good: it is served with a long ``max-age`` and an ``ETag``. Faces and photos
are ``private``: the browser may keep them, a shared cache in front of the page may not.
"""

from __future__ import annotations

import io
import math
import os
import threading
from pathlib import Path
from typing import Optional

from flask import Blueprint, Response, current_app, request, send_file
from PIL import Image

from facesortd.errors import BadImage
from facesortd.formats import BROWSER_UNSAFE, is_raw
from facesortd.ingest.imageio import FORMATS, decode, decode_face_crop
from facesortd.store.database import decode_path
from facesortd.web import queries
from facesortd.web.context import read_conn
from facesortd.web.security import error

bp = Blueprint("media", __name__)

THUMB_PX = 160
MARGIN = 0.25          # of the box's longer side, on each side
THUMB_CACHE = "private, max-age=31536000, immutable"
IMAGE_CACHE = "private, max-age=300"
SHOWN_PX = 2048        # a HEIC or RAW photo is sent as a JPEG copy no side longer than this
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
        "TIFF": "image/tiff", "MPO": "image/jpeg", "GIF": "image/gif"}


def thumbs_dir() -> Path:
    return current_app.config["FACESORTD_CONFIG"].state_dir / "thumbs"


def thumb_path(face_id: int) -> Path:
    return thumbs_dir() / f"{face_id // 1000:04d}" / f"{face_id}.jpg"


def _photo(conn, image_id: int) -> Optional[tuple[Path, Path]]:
    """(the file as it is now, its inbox) or None when no file of the image can be found."""
    found = queries.image_files(conn, image_id)
    if found is None:
        return None
    inbox, candidates = found
    for value in candidates:
        path = decode_path(value)
        if path.is_file():
            return path, decode_path(inbox)
    return None


def _aligned(inbox: Path) -> bool:
    """Files of an aligned inbox are one face each; their stored box is the model's crop size."""
    config = current_app.config["FACESORTD_CONFIG"]
    return any(i.mode == "aligned" and i.path == inbox for i in config.inboxes)


def make_thumbnail(photo: Path, box: tuple[float, float, float, float], whole: bool) -> Image.Image:
    """The face square of ``photo`` at THUMB_PX, decoding no more pixels than it needs."""
    if whole:
        return Image.fromarray(decode_face_crop(photo, THUMB_PX))
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * MARGIN)
    if is_raw(photo.name):
        decoded = decode(photo)   # the embedded preview: the pixels its boxes were found in
    else:
        with Image.open(photo, formats=FORMATS) as im:
            long_side = max(im.size)
        # decode just big enough that the face square still has THUMB_PX pixels
        max_side = min(long_side, math.ceil(long_side * THUMB_PX / side) + 1)
        decoded = decode(photo, max_side=max_side)
    cx, cy, s = (x1 + x2) / 2 / decoded.scale, (y1 + y2) / 2 / decoded.scale, side / decoded.scale
    h, w = decoded.rgb.shape[:2]
    left, top = max(0, int(cx - s / 2)), max(0, int(cy - s / 2))
    right, bottom = min(w, int(math.ceil(cx + s / 2))), min(h, int(math.ceil(cy + s / 2)))
    if right <= left or bottom <= top:
        raise BadImage("the face box lies outside the photo")
    crop = Image.fromarray(decoded.rgb[top:bottom, left:right])
    crop.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    return crop


def _etag_response(path: Path, etag: str, cache: str, mimetype: str) -> Response:
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        response = send_file(path, mimetype=mimetype, conditional=False, etag=False,
                             max_age=None)
    response.set_etag(etag)
    response.headers["Cache-Control"] = cache
    return response


@bp.get("/thumb/<int:face_id>.jpg")
def thumb(face_id: int):
    path = thumb_path(face_id)
    etag = f"face-{face_id}"
    if not path.is_file():
        conn = read_conn()
        found = queries.face(conn, face_id)
        if found is None:
            return error(404, f"no face with id {face_id}")
        image_id, box, _ = found
        photo = _photo(conn, image_id)
        if photo is None:
            return error(404, f"the photo of face {face_id} (image {image_id}) is not on disk")
        try:
            picture = make_thumbnail(photo[0], box, whole=_aligned(photo[1]))
        except BadImage as exc:
            return error(422, f"cannot make the thumbnail of face {face_id}: {exc}")
        _save(picture, path)
    return _etag_response(path, etag, THUMB_CACHE, "image/jpeg")


def _save(picture: Image.Image, path: Path) -> None:
    """Write atomically: a reader sees a whole thumbnail or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name per thread, then an atomic rename: two requests for one face need no lock
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    picture.convert("RGB").save(tmp, "JPEG", quality=85)
    os.replace(tmp, path)


def photo_file(conn, image_id: int) -> Optional[tuple[Path, bool]]:
    """(the photo's file as it is now, whether it came from an aligned inbox) or None."""
    photo = _photo(conn, image_id)
    return None if photo is None else (photo[0], _aligned(photo[1]))


def upright_size(conn, image_id: int) -> Optional[tuple[int, int]]:
    """(width, height) of the photo as its face boxes were found in (upright, full size; a camera
    RAW's embedded preview), or None when its file is not on disk or not readable."""
    photo = _photo(conn, image_id)
    if photo is None:
        return None
    try:
        if _aligned(photo[1]):
            with Image.open(photo[0], formats=FORMATS) as im:
                return im.size
        return decode(photo[0], max_side=None if is_raw(photo[0].name) else 64).original_size
    except (BadImage, OSError):
        return None


@bp.get("/image/<int:image_id>")
def image(image_id: int):
    """The photo itself, from wherever it is now."""
    conn = read_conn()
    photo = _photo(conn, image_id)
    if photo is None:
        if queries.image_files(conn, image_id) is None:
            return error(404, f"no image with id {image_id}")
        return error(404, f"the file of image {image_id} is not on disk")
    try:
        if is_raw(photo[0].name):
            fmt = "RAW"
        else:
            with Image.open(photo[0], formats=FORMATS) as im:
                fmt = im.format or ""
    except Exception:
        return error(422, f"image {image_id} is not a readable picture")
    stat = photo[0].stat()
    etag = f"image-{image_id}-{stat.st_size}-{stat.st_mtime_ns}"
    if fmt in BROWSER_UNSAFE or fmt == "RAW":
        return _as_jpeg(photo[0], image_id, etag)
    return _etag_response(photo[0], etag, IMAGE_CACHE, MIME.get(fmt, "application/octet-stream"))


def _as_jpeg(photo: Path, image_id: int, etag: str) -> Response:
    """A photo browsers cannot show (HEIC, a camera RAW's preview) as an upright JPEG copy."""
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        try:
            decoded = decode(photo, max_side=SHOWN_PX)
        except BadImage as exc:
            return error(422, f"image {image_id} is not a readable picture: {exc}")
        out = io.BytesIO()
        Image.fromarray(decoded.rgb).save(out, "JPEG", quality=88)
        response = Response(out.getvalue(), mimetype="image/jpeg")
    response.set_etag(etag)
    response.headers["Cache-Control"] = IMAGE_CACHE
    return response
