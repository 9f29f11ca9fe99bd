"""``facesortd web``: the review page alone, against the store, while no daemon runs.

It holds the state folder's lock like the daemon (one writer per store), so it also does what
makes a correction real: the identity thread (recluster on request, corrections re-read) and the
placer (files follow each correction, and an interrupted placement is finished at start). It
needs no model and no inbox. With a daemon running, use the daemon's own page instead.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

from facesortd.config import Config
from facesortd.errors import FacesortdError

log = logging.getLogger("facesortd.web")


class ReviewServer:
    """``open()``, ``start()``, then ``stop.wait()``; ``close()`` stops and joins everything."""

    def __init__(self, config: Config, port: Optional[int] = None):
        self.config = config
        self.port = config.web.port if port is None else port
        self.changed = threading.Event()
        self.stop = threading.Event()
        self.state = self.store = self.identities = self.placer = self.placer_loop = self.web = None

    def open(self) -> None:
        from facesortd.app.state import open_state
        from facesortd.app.supervisor import WebServer
        from facesortd.store.lock import StateBusy
        from facesortd.web import Control, create_app

        cfg = self.config
        try:
            self.state = open_state(cfg, existing=True, load_vectors=False,
                                    on_changed=self.changed.set)
        except StateBusy:
            raise FacesortdError(
                f"a facesortd daemon is running on {cfg.state_dir}: it serves the review page "
                f"itself at http://{cfg.web.host}:{cfg.web.port}/ when web.enabled is true; "
                "stop the daemon to use `facesortd web` alone") from None
        self.store, self.placer = self.state.store, self.state.placer
        self.identities = self.state.identities
        try:
            control = Control(changed=self.changed.set,
                              request_recluster=self.identities.request_recluster)
            app = create_app(cfg, self.store, None, control=control)
            self.web = WebServer(app, cfg.web.host, self.port)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        from facesortd.library.loop import PlacerLoop

        self.identities.start()
        self.placer_loop = self.state.placer_loop = PlacerLoop(self.placer, self.changed, debounce=0.3)
        self.placer_loop.start()
        self.web.start()
        log.info("review page on %s (pid %d)", self.web.url, os.getpid())

    def close(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None
        if self.state is not None:   # identities, then the placer loop, then the store
            self.state.close()
            self.state = self.store = self.identities = self.placer_loop = None


def serve(config: Config, port: Optional[int] = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    import signal

    server = ReviewServer(config, port)
    recluster = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    signal.signal(signal.SIGINT, lambda *_: server.stop.set())
    # `facesortd recluster` finds this process's pid in the lock, like the daemon's: SIGUSR1
    signal.signal(signal.SIGUSR1, lambda *_: recluster.set())
    server.open()
    try:
        server.start()
        print(f"facesortd review page on {server.web.url}", flush=True)
        while not server.stop.wait(0.2):
            if recluster.is_set():
                recluster.clear()
                server.identities.request_recluster()
    finally:
        server.close()
