"""The web app: a Flask factory to which each feature adds one blueprint.

``create_app(config, store, telemetry, control=...)`` serves the review pages (``pages``), the
JSON review API (``api``), thumbnails and photos by id (``media``), ``/healthz`` and ``/metrics``
(``health``). Reads use a read-only SQLite connection per request; changes go through
``corrections`` on ``store`` and then ``control.changed()``, so the files follow. Access token,
CSRF and headers: ``security``; the Host names it answers and the proxies it believes: ``hosts``.
"""

from __future__ import annotations

from typing import Any, Optional

from flask import Flask

from facesortd.config import Config
from facesortd.web.context import (
    Control,
    close_read_conn,
    control,
    inline_control,
    read_conn,
    state,
)


def create_app(config: Config, store: Any, telemetry: Any = None,
               test_config: Optional[dict] = None, control: Optional[Control] = None) -> Flask:
    """The app for ``config``; ``store`` is an open Store, ``telemetry`` the daemon's, if any."""
    from facesortd.errors import ConfigError
    from facesortd.telemetry import Telemetry
    from facesortd.web import api, exports, health, hosts, media, pages, security

    if not config.web.is_loopback and not config.web.token:
        raise ConfigError(config.source or "the config", [
            f"web.token: required when web.host is not loopback ({config.web.host}); "
            "set a long random token, or bind web.host to 127.0.0.1"])
    app = Flask(__name__)
    app.config.update(FACESORTD_CONFIG=config, FACESORTD_TOKEN=config.web.token,
                      FACESORTD_SECRET=security.load_secret(config.state_dir),
                      JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=1 << 20,
                      SEND_FILE_MAX_AGE_DEFAULT=3600)
    if test_config:
        app.config.update(test_config)
    app.extensions["facesortd"] = {
        "store": store,
        # `facesortd web` alone has no daemon: the store figures are still worth serving.
        "telemetry": telemetry if telemetry is not None else Telemetry(),
        "daemon_telemetry": telemetry is not None,
        "control": control if control is not None else inline_control(config, store),
        "read": read_conn,
        "hosts": hosts.HostPolicy(config.web),
        "models": {},   # the store's model, loaded at the first face drawn on a photo
    }
    app.wsgi_app = hosts.ProxyGate(app.wsgi_app, config.web.trusted_proxies)  # type: ignore
    security.install(app)
    app.teardown_appcontext(close_read_conn)
    for blueprint in (health.bp, api.bp, exports.bp, media.bp, pages.bp):
        app.register_blueprint(blueprint)
    pages.install_error_pages(app)
    return app


__all__ = ["Control", "create_app", "inline_control", "state", "control", "read_conn"]
