"""Who may use the review page, and how a change is proven to come from it.

- **Access token** (``web.token``; required by the config off loopback): every request but the
  public endpoints carries it as ``Authorization: Bearer <token>``, or the browser carries the
  cookie that ``/login`` sets once the token was typed into its form. The cookie holds an HMAC of
  the token, never the token itself.
- **Host names** (``hosts``): a request whose Host is not one this page serves is refused before
  anything else (DNS rebinding).
- **CSRF**: every POST carries ``X-CSRF-Token`` (API) or a ``csrf`` form field (login), an HMAC
  that a page of another site cannot read; API POSTs must also be JSON and, when the browser says
  where it comes from (``Origin``), come from a host on the same allow-list.
- **Headers**: a strict Content-Security-Policy (scripts, styles and images from this server only;
  the page works offline), no framing, no sniffing, no referrer.

The HMAC key lives in ``<state_dir>/web_secret`` (mode 0600), so a restart keeps browsers logged in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Optional

from flask import Flask, Response, abort, current_app, jsonify, redirect, request, url_for

from facesortd.web.hosts import check_host, origin_allowed

AUTH_COOKIE = "facesortd_auth"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_MAX_AGE_S = 30 * 24 * 3600

#: Endpoints that answer without the access token: liveness probes, the login form, the page's
#: own static files (no data in them).
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "pages.login", "pages.login_post", "static"})

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def load_secret(state_dir: Path) -> bytes:
    """The key of the cookie and CSRF HMACs: made once, kept in ``state_dir/web_secret``."""
    path = Path(state_dir) / "web_secret"
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    tmp = path.with_name(f".web_secret.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    os.replace(tmp, path)
    return secret


def _mac(purpose: str, value: str = "") -> str:
    key = current_app.config["FACESORTD_SECRET"]
    return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def csrf_token() -> str:
    """The token pages embed and ``GET /api/csrf`` returns; bound to the access token, if any."""
    return _mac("csrf", current_app.config.get("FACESORTD_TOKEN") or "")


def auth_cookie_value() -> str:
    return _mac("auth", current_app.config["FACESORTD_TOKEN"])


def token_matches(given: str) -> bool:
    token = current_app.config.get("FACESORTD_TOKEN") or ""
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def is_authorised() -> bool:
    """True when no token is configured, or the request carries it (header or login cookie)."""
    if not current_app.config.get("FACESORTD_TOKEN"):
        return True
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and token_matches(header[7:].strip()):
        return True
    cookie = request.cookies.get(AUTH_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), auth_cookie_value().encode())


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/thumb/") \
        or request.path.startswith("/image/") or request.path in ("/metrics",)


def check_request() -> Optional[Response]:
    """``before_request``: the access token, then CSRF on every state change."""
    if request.endpoint not in PUBLIC_ENDPOINTS and not is_authorised():
        if _wants_json() or request.method != "GET":
            return error(401, "the access token is missing or wrong: send "
                              "'Authorization: Bearer <web.token>' or log in at /login")
        return redirect(url_for("pages.login", next=safe_next(request.full_path)))
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.endpoint != "pages.login_post":
        given = request.headers.get(CSRF_HEADER, "")
        if not given or not hmac.compare_digest(given.encode(), csrf_token().encode()):
            return error(403, f"missing or wrong CSRF token: send the {CSRF_HEADER} header "
                              "(from the page, or GET /api/csrf)")
        if request.content_length and not request.is_json:
            return error(415, "send the request body as JSON (Content-Type: application/json)")
        if not origin_allowed():
            return error(403, "cross-origin request refused")
    return None


def safe_next(target: Optional[str]) -> str:
    """Where to go after logging in: a path on this server only (never ``//host`` or a URL)."""
    target = (target or "/").rstrip("?") or "/"
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def error(status: int, message: str) -> Response:
    response = jsonify({"error": message, "status": status})
    response.status_code = status
    return response


def secure_headers(response: Response) -> Response:
    """``after_request``: CSP and friends on every response."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.method == "GET" and "Cache-Control" not in response.headers \
            and response.mimetype in ("text/html", "application/json"):
        response.headers["Cache-Control"] = "no-store"
    return response


def install(app: Flask) -> None:
    app.before_request(check_host)      # first: a foreign Host gets nothing, not even a redirect
    app.before_request(check_request)
    app.after_request(secure_headers)


def require(condition: bool, message: str, status: int = 400) -> None:
    """Stop the request with a clear 4xx when a parameter is not what the API accepts."""
    if not condition:
        abort(error(status, message))
