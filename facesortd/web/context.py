"""What a request of the review app reaches: the store, telemetry and control it was made with,
and its own read-only connection to the store. The blueprints import this module, never the
package's ``__init__`` (which imports them to build the app)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Optional

from flask import current_app, g

from facesortd.config import Config

__all__ = ["Control", "inline_control", "state", "control", "read_conn", "close_read_conn"]


@dataclass(frozen=True)
class Control:
    """What the page may ask of whoever runs it: the placer should look again (after a
    correction), a recluster (queued on the identity thread; returns at once), and new faces
    to assign (a face drawn on a photo)."""

    changed: Callable[[], None]
    request_recluster: Callable[[], None]
    #: faces a person added (drawn on a photo): the identity service links them into its graph
    faces_added: Callable[[list[int]], None] = lambda face_ids: None

    def recluster(self) -> dict:
        self.request_recluster()
        return {"recluster": "queued"}


def inline_control(config: Config, store: Any) -> Control:
    """For an app with no daemon behind it (tests, tools): a recluster runs in the request and
    nothing places files, so files follow at the next ``facesortd run``."""
    from facesortd.models.embedders import eps_model, tuned_eps
    from facesortd.people.service import service_for

    def recluster() -> None:
        eps = tuned_eps(eps_model(config.embedder, store.model_id))
        service_for(store, config.clustering, eps).recluster(reason="review page")

    return Control(changed=lambda: None, request_recluster=recluster)


def read_conn() -> sqlite3.Connection:
    """This request's read-only connection to the store (opened on first use)."""
    from facesortd.web.queries import connect

    if "facesortd_read" not in g:
        g.facesortd_read = connect(state("store").path)
    return g.facesortd_read


def close_read_conn(_exc: Optional[BaseException]) -> None:
    conn = g.pop("facesortd_read", None)
    if conn is not None:
        conn.close()


def state(name: str) -> Any:
    """The store or telemetry this app was made with (``state("store")``)."""
    return current_app.extensions["facesortd"][name]


def control() -> Control:
    return state("control")
