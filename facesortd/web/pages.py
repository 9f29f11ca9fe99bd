"""The review pages: people, one person, unassigned faces, merge suggestions, history, login.

Pages are rendered on the server from ``queries`` (no build step, no outside assets); the one
script, ``static/review.js``, selects faces and sends the actions to the JSON API with the CSRF
token the page carries, then reloads.
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, current_app, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from facesortd.web import media, queries
from facesortd.web.context import read_conn
from facesortd.web.security import (
    AUTH_COOKIE,
    COOKIE_MAX_AGE_S,
    auth_cookie_value,
    csrf_token,
    error,
    safe_next,
    token_matches,
)

bp = Blueprint("pages", __name__)

#: How long a wrong token makes the login form wait (slows guessing).
LOGIN_FAIL_DELAY_S = 1.0

OPS = {"rename": "renamed", "merge": "merged", "move_faces": "moved faces",
       "split": "split", "not_this_person": "not this person", "reject": "not a face",
       "accept_suggestion": "accepted a suggestion", "dismiss_suggestion": "dismissed a suggestion",
       "confirm": "confirmed", "hide": "hid a person", "unhide": "showed a person again",
       "people_import": "imported people", "add_face": "drew a face",
       "remove_images": "removed photos", "adopt": "adopted folders"}


@bp.app_template_filter("utc")
def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def _page_arg() -> int | None:
    raw = request.args.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        return None
    return int(raw)


def _render(template: str, **context):
    context.setdefault("csrf", csrf_token())
    context.setdefault("token_required", bool(current_app.config.get("FACESORTD_TOKEN")))
    return render_template(template, **context)


def _bad_page():
    return _render("error.html", status=400,
                   message="page must be a whole number from 1 to 1000000"), 400


@bp.get("/")
def people():
    page, q = _page_arg(), request.args.get("q", "")[:100]
    if page is None:
        return _bad_page()
    sort = request.args.get("sort", "size")
    if sort not in queries.SORTS:
        sort = "size"
    data = queries.identities(read_conn(), page, q, sort=sort)
    return _render("people.html", data=data, q=q, sort=sort, nav="people")


@bp.get("/people/<int:identity_id>")
def person(identity_id: int):
    page = _page_arg()
    if page is None:
        return _bad_page()
    order = request.args.get("order", "doubt")
    if order not in queries.ORDERS:
        order = "doubt"
    data = queries.identity(read_conn(), identity_id, page, order=order)
    if data is None:
        return _render("error.html", status=404, message=f"no person with id {identity_id}"), 404
    if data["merged_into"] is not None:
        return redirect(url_for("pages.person", identity_id=data["merged_into"]))
    return _render("person.html", person=data, nav="people")


@bp.get("/review")
def review():
    page = _page_arg()
    if page is None:
        return _bad_page()
    return _render("review.html", data=queries.review(read_conn(), page, samples=3), nav="review")


@bp.get("/photo/<int:image_id>")
def photo(image_id: int):
    """The whole photo with every face box drawn and labelled with its person."""
    conn = read_conn()
    data = queries.image(conn, image_id)
    if data is None:
        return _render("error.html", status=404, message=f"no photo with id {image_id}"), 404
    size = media.upright_size(conn, image_id)
    if size is None:   # an aligned crop (its box is the model's crop) or a file gone: the boxes' frame
        size = (max([f["box"][2] for f in data["faces"]] or [1]),
                max([f["box"][3] for f in data["faces"]] or [1]))
    w, h = size
    for f in data["faces"]:
        x1, y1, x2, y2 = f["box"]
        f["pct"] = [round(100 * x1 / w, 3), round(100 * y1 / h, 3),
                    round(100 * (x2 - x1) / w, 3), round(100 * (y2 - y1) / h, 3)]
    raw = request.args.get("face", "")
    focus = int(raw) if raw.isdigit() else None
    return _render("photo.html", photo=data, size=size, focus=focus, nav="")


@bp.get("/hidden")
def hidden():
    page = _page_arg()
    if page is None:
        return _bad_page()
    return _render("hidden.html", data=queries.identities(read_conn(), page, hidden=True),
                   nav="hidden")


@bp.get("/unassigned")
def unassigned():
    page = _page_arg()
    if page is None:
        return _bad_page()
    return _render("unassigned.html", data=queries.unassigned(read_conn(), page), nav="unassigned")


@bp.get("/suggestions")
def suggestions():
    return _render("suggestions.html", suggestions=queries.suggestions(read_conn()),
                   nav="suggestions")


@bp.get("/history")
def history():
    return _render("history.html", history=queries.history(read_conn()), ops=OPS, nav="history")


@bp.get("/login")
def login():
    return _render("login.html", next=safe_next(request.args.get("next")), failed=False, bare=True)


@bp.post("/login")
def login_post():
    nxt = safe_next(request.form.get("next"))
    if request.form.get("csrf") != csrf_token():
        return _render("error.html", status=403, message="the login form expired; reload it"), 403
    if not current_app.config.get("FACESORTD_TOKEN"):
        return redirect(nxt)
    if not token_matches(request.form.get("token", "")):
        time.sleep(LOGIN_FAIL_DELAY_S)
        return _render("login.html", next=nxt, failed=True, bare=True), 401
    response = make_response(redirect(nxt))
    response.set_cookie(AUTH_COOKIE, auth_cookie_value(), max_age=COOKIE_MAX_AGE_S,
                        httponly=True, samesite="Strict", secure=request.is_secure, path="/")
    return response


@bp.post("/logout")
def logout():
    response = make_response({"ok": True})
    response.delete_cookie(AUTH_COOKIE, path="/")
    return response


def _is_html_path() -> bool:
    return not (request.path.startswith(("/api/", "/thumb/", "/image/"))
                or request.path in ("/healthz", "/metrics"))


def install_error_pages(app: Flask) -> None:
    """Errors as JSON under the API and media routes, as a page elsewhere."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.response is not None:   # abort(Response): already what the client should get
            return exc.response
        code = exc.code or 500
        message = exc.description or exc.name
        if _is_html_path() and request.method == "GET":
            return _render("error.html", status=code, message=message), code
        return error(code, message)
