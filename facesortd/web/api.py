"""The review API under ``/api/`` (DESIGN.md): JSON in and out; the pages use it, scripts may too.

Reads come from ``queries`` on the request's read-only connection. Every change goes through the
shared operations of ``corrections`` on the daemon's store, in one transaction each, and then
tells the control (the daemon, or ``facesortd web``) so the files on disk follow at once.
Parameters are checked strictly: a wrong one is a 400 that says what is accepted, an unknown id a
404, a correction that cannot be made (a merged identity, a split that empties one) a 409.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from flask import Blueprint, current_app, jsonify, request

from facesortd.errors import BadImage, FacesortdError
from facesortd.people import corrections
from facesortd.web import drawing, media, queries
from facesortd.web.context import control, read_conn, state
from facesortd.web.security import csrf_token, error, require

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_FACES = 10_000
MAX_NAME = 200
MAX_PAGE = 1_000_000
MAX_QUERY = 100


def _page() -> int:
    raw = request.args.get("page", "1")
    require(raw.isdigit() and 1 <= int(raw) <= MAX_PAGE,
            f"page must be a whole number from 1 to {MAX_PAGE}, not {raw[:20]!r}")
    return int(raw)


def _body() -> dict:
    body = request.get_json(silent=True)
    require(isinstance(body, dict), "the body must be a JSON object")
    return body


def _int(value: Any, what: str) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2 ** 63,
            f"{what} must be a positive integer id, not {str(value)[:40]!r}")
    return value


def _face_ids(body: dict) -> list[int]:
    faces = body.get("faces")
    require(isinstance(faces, list) and 0 < len(faces) <= MAX_FACES,
            f"'faces' must be a list of 1 to {MAX_FACES} face ids")
    return [_int(f, "each face") for f in faces]


def _change(operation: Callable[..., dict], *args: Any) -> Any:
    """Run one correction; its files follow at once. Unknown ids are 404s, refusals 409s."""
    try:
        result = operation(state("store"), *args)
    except corrections.UnknownId as exc:
        return error(404, str(exc))
    except corrections.CorrectionError as exc:
        return error(409, str(exc))
    control().changed()
    return jsonify({"ok": True, **(result if isinstance(result, dict) else {"done": result})})


@bp.get("/csrf")
def csrf():
    return jsonify({"csrf_token": csrf_token(), "header": "X-CSRF-Token"})


@bp.get("/identities")
def identities():
    q = request.args.get("q", "")
    require(len(q) <= MAX_QUERY, f"q must be at most {MAX_QUERY} characters")
    hidden = request.args.get("hidden", "0")
    require(hidden in ("0", "1"), "hidden must be 0 or 1")
    sort = request.args.get("sort", "size")
    require(sort in queries.SORTS, f"sort must be one of {', '.join(queries.SORTS)}")
    return jsonify(queries.identities(read_conn(), _page(), q, hidden=hidden == "1", sort=sort))


@bp.get("/review")
def review():
    """The review queue: faces most likely wrong first (``queries.review``)."""
    return jsonify(queries.review(read_conn(), _page()))


def _order() -> str:
    order = request.args.get("order", "doubt")
    require(order in queries.ORDERS, f"order must be one of {', '.join(queries.ORDERS)}")
    return order


@bp.get("/identities/<int:identity_id>")
def identity(identity_id: int):
    found = queries.identity(read_conn(), identity_id, _page(), order=_order())
    if found is None:
        return error(404, f"no identity with id {identity_id}")
    return jsonify(found)


@bp.get("/unassigned")
def unassigned():
    return jsonify(queries.unassigned(read_conn(), _page()))


@bp.get("/images/<int:image_id>")
def image(image_id: int):
    """One photo's faces: boxes (upright full-size pixels) and people."""
    found = queries.image(read_conn(), image_id)
    if found is None:
        return error(404, f"no image with id {image_id}")
    return jsonify(found)


@bp.get("/suggestions")
def suggestions():
    return jsonify({"suggestions": queries.suggestions(read_conn())})


@bp.get("/history")
def history():
    return jsonify({"history": queries.history(read_conn())})


@bp.post("/identities/<int:identity_id>/rename")
def rename(identity_id: int):
    name = _body().get("name")
    require(name is None or isinstance(name, str), "'name' must be a string (or null to clear it)")
    require(name is None or len(name) <= MAX_NAME, f"'name' must be at most {MAX_NAME} characters")
    return _change(corrections.rename, identity_id, name)


@bp.post("/identities/<int:identity_id>/merge")
def merge(identity_id: int):
    into = _int(_body().get("into"), "'into'")
    return _change(corrections.merge, identity_id, into)


@bp.post("/faces/move")
def move():
    body = _body()
    faces = _face_ids(body)
    to = body.get("to")
    target = "new" if to == "new" else _int(to, "'to' (an identity id or \"new\")")
    return _change(corrections.move_faces, faces, target)


@bp.post("/faces/not-this-person")
def not_this_person():
    return _change(corrections.not_this_person, _face_ids(_body()))


@bp.post("/faces/confirm")
def confirm():
    return _change(corrections.confirm, _face_ids(_body()))


@bp.post("/identities/<int:identity_id>/hide")
def hide(identity_id: int):
    return _change(corrections.hide, identity_id, True)


@bp.post("/identities/<int:identity_id>/unhide")
def unhide(identity_id: int):
    return _change(corrections.hide, identity_id, False)


@bp.post("/faces/reject")
def reject():
    return _change(corrections.reject, _face_ids(_body()))


@bp.post("/images/<int:image_id>/faces")
def draw_face(image_id: int):
    """A face the detector missed: ``{"box": [x0, y0, x1, y1], "to": <id> | "new"}``, the box in
    the upright photo's pixels (as ``GET /api/images/<id>`` gives them)."""
    body = _body()
    box = body.get("box")
    require(isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box),
        "'box' must be [x0, y0, x1, y1], numbers in the photo's pixels")
    to = body.get("to")
    target = "new" if to == "new" else _int(to, "'to' (an identity id or \"new\")")
    conn = read_conn()
    if queries.image(conn, image_id) is None:
        return error(404, f"no image with id {image_id}")
    found, size = media.photo_file(conn, image_id), media.upright_size(conn, image_id)
    if found is None or size is None:
        return error(409, f"the file of image {image_id} is not on disk or not readable")
    if found[1]:
        return error(409, "a photo of an aligned inbox is one face already")
    x0, y0, x1, y1 = max(0.0, min(box[0], box[2])), max(0.0, min(box[1], box[3])), \
        min(float(size[0]), max(box[0], box[2])), min(float(size[1]), max(box[1], box[3]))
    require(x1 - x0 >= drawing.MIN_SIDE_PX and y1 - y0 >= drawing.MIN_SIDE_PX,
            f"the box must be at least {drawing.MIN_SIDE_PX} pixels a side inside the photo")
    store = state("store")
    try:
        vector = drawing.embed_box(state("models"), current_app.config["FACESORTD_CONFIG"],
                                   store.model_id, found[0], (x0, y0, x1, y1))
    except (BadImage, FacesortdError) as exc:    # an unreadable photo; the model not available
        return error(422 if isinstance(exc, BadImage) else 503, f"cannot embed the face: {exc}")
    response = _change(corrections.add_face, image_id, (x0, y0, x1, y1), vector, target)
    if response.status_code == 200:
        control().faces_added([response.get_json()["face"]])
    return response


@bp.post("/suggestions/<int:suggestion_id>/accept")
def accept(suggestion_id: int):
    return _change(corrections.accept_suggestion, suggestion_id)


@bp.post("/suggestions/<int:suggestion_id>/dismiss")
def dismiss(suggestion_id: int):
    return _change(corrections.dismiss_suggestion, suggestion_id)


@bp.post("/recluster")
def recluster():
    return jsonify({"ok": True, **control().recluster()}), 202


@bp.post("/undo")
def undo():
    done = corrections.undo(state("store"), last=1)
    if not done:
        return error(409, "nothing to undo")
    control().changed()
    return jsonify({"ok": True, "undone": done})
