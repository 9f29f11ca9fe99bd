"""The web app: a Flask factory to which each feature adds one blueprint.

``create_app(config, store, telemetry)`` serves what the daemon knows. It talks only to the store
(and the daemon's telemetry); no path ever comes from a request. When ``web.token`` is set, every
request but ``/healthz`` must carry it (``Authorization: Bearer <token>``); the config already
refuses a non-loopback ``web.host`` without a token.
"""

from __future__ import annotations

import hmac
from typing import Any, Optional

from flask import Flask, abort, current_app, request

from ..config import Config

#: Endpoints that answer without the access token (liveness probes).
PUBLIC_ENDPOINTS = frozenset({"health.healthz"})


def create_app(config: Config, store: Any, telemetry: Any = None,
               test_config: Optional[dict] = None) -> Flask:
    """The app for ``config``; ``store`` is an open Store, ``telemetry`` the daemon's, if any."""
    from ..telemetry import Telemetry
    from .health import bp as health_bp

    app = Flask(__name__)
    app.config.update(FACESORTD_CONFIG=config, FACESORTD_TOKEN=config.web.token,
                      JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    app.extensions["facesortd"] = {
        "store": store,
        # `facesortd web` alone has no daemon: the store figures are still worth serving.
        "telemetry": telemetry if telemetry is not None else Telemetry(),
        "daemon_telemetry": telemetry is not None,
    }
    app.before_request(_require_token)
    app.register_blueprint(health_bp)
    return app


def _require_token() -> None:
    token = current_app.config.get("FACESORTD_TOKEN")
    if not token or request.endpoint in PUBLIC_ENDPOINTS:
        return
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), str(token).encode()):
        abort(401)


def state(name: str) -> Any:
    """The store or telemetry this app was made with (``state("store")``)."""
    return current_app.extensions["facesortd"][name]


__all__ = ["create_app", "state"]
