"""The web app: a Flask factory to which each feature adds one blueprint.

``create_app(config, store, telemetry, control=...)`` serves the review pages (``pages``), the
JSON review API (``api``), thumbnails and photos by id (``media``), ``/healthz`` and ``/metrics``
(``health``). Reads use a read-only SQLite connection per request; changes go through
``corrections`` on ``store`` and then ``control.changed()``, so the files follow. Access token,
CSRF and headers: ``security``; the Host names it answers and the proxies it believes: ``hosts``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Optional

from flask import Flask, current_app, g

from facesortd.config import Config


@dataclass(frozen=True)
class Control:
    """What the page may ask of whoever runs it: the placer should look again (after a
    correction), and a recluster (queued on the identity thread; returns at once)."""

    changed: Callable[[], None]
    request_recluster: Callable[[], None]

    def recluster(self) -> dict:
        self.request_recluster()
        return {"recluster": "queued"}


def inline_control(config: Config, store: Any) -> Control:
    """For an app with no daemon behind it (tests, tools): a recluster runs in the request and
    nothing places files, so files follow at the next ``facesortd run``."""
    from facesortd.models.embedders import tuned_eps
    from facesortd.people.service import service_for

    def recluster() -> None:
        eps = tuned_eps(store.model_id or config.embedder.name)
        service_for(store, config.clustering, eps).recluster(reason="review page")

    return Control(changed=lambda: None, request_recluster=recluster)


def create_app(config: Config, store: Any, telemetry: Any = None,
               test_config: Optional[dict] = None, control: Optional[Control] = None) -> Flask:
    """The app for ``config``; ``store`` is an open Store, ``telemetry`` the daemon's, if any."""
    from facesortd.errors import ConfigError
    from facesortd.telemetry import Telemetry
    from facesortd.web import api, health, hosts, media, pages, security

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
    }
    app.wsgi_app = hosts.ProxyGate(app.wsgi_app, config.web.trusted_proxies)  # type: ignore
    security.install(app)
    app.teardown_appcontext(_close_read_conn)
    for blueprint in (health.bp, api.bp, media.bp, pages.bp):
        app.register_blueprint(blueprint)
    pages.install_error_pages(app)
    return app


def read_conn() -> sqlite3.Connection:
    """This request's read-only connection to the store (opened on first use)."""
    from facesortd.web.queries import connect

    if "facesortd_read" not in g:
        g.facesortd_read = connect(state("store").path)
    return g.facesortd_read


def _close_read_conn(_exc: Optional[BaseException]) -> None:
    conn = g.pop("facesortd_read", None)
    if conn is not None:
        conn.close()


def state(name: str) -> Any:
    """The store or telemetry this app was made with (``state("store")``)."""
    return current_app.extensions["facesortd"][name]


def control() -> Control:
    return state("control")


__all__ = ["Control", "create_app", "inline_control", "state", "control", "read_conn"]
