"""What makes ``facesortd run`` a well-behaved service, beside the daemon's own threads.

``Supervisor`` serves the web app in a thread, tells systemd READY/STATUS/WATCHDOG/STOPPING, keeps
the telemetry gauges current, writes ``<state_dir>/status.json`` for ``facesortd status``, and
checks that the daemon is healthy: every thread of every component alive (each ``Component``
reports its own) and the pipeline making progress. While it is not, the watchdog pings stop, so
systemd restarts a hung daemon (``WatchdogSec=``). It is given the parts it watches; it never
reaches into the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Protocol, Sequence

from facesortd.app.sdnotify import Notifier
from facesortd.config import Config
from facesortd.errors import FacesortdError
from facesortd.web import exports

log = logging.getLogger("facesortd.service")

STATUS_EVERY_S = 5.0
#: A non-empty queue with no file or batch finished for this long means the pipeline hangs.
STALL_S = 300.0
#: Config keys a SIGHUP cannot change in a running daemon (they take effect on restart).
RESTART_KEYS = ("state_dir", "library", "embedder", "detector", "web")


class WebServer:
    """The Flask app under werkzeug's threaded server, in one thread; ``stop()`` shuts it down."""

    def __init__(self, app: Any, host: str, port: int):
        from werkzeug.serving import make_server

        try:
            self._server = make_server(host, port, app, threaded=True)
        except (OSError, SystemExit) as exc:  # werkzeug prints a hint and exits on a busy port
            reason = getattr(exc, "strerror", None) or "address in use or not available"
            raise FacesortdError(
                f"web: cannot listen on {host}:{port} ({reason}); is another "
                "facesortd or program using that port? Set web.port to a free port, or "
                "web.enabled: false") from None
        self.app = app
        self.host, self.port = host, self._server.server_port
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            # One access line per Prometheus scrape or probe would flood the journal.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._server.serve_forever, name="facesortd-web",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        exports.stop(self.app)   # a page export still copying stops between two files


class Component(Protocol):
    """A running part of the daemon (pipeline, watcher, identity service, placer loop)."""

    def threads(self) -> list[threading.Thread]:
        """The threads it started that must stay alive while it runs ([] once stopped)."""


class Supervisor:
    """Web page, systemd notifications, health and status figures around the daemon's parts.

    ``components``: the parts whose threads must stay alive; ``queue()``: (files in the pipeline,
    files the watcher still settles); ``last_recluster()``: the identity service's latest counts
    (a new object after each recluster); ``web_app()``: the review app to serve, or None.
    """

    def __init__(self, config: Config, telemetry: Any, components: Sequence[Component] = (), *,
                 store: Any = None, queue: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 last_recluster: Callable[[], object] = lambda: None,
                 web_app: Optional[Callable[[], Any]] = None,
                 notifier: Optional[Notifier] = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.telemetry = telemetry
        self.components = list(components)
        self.store = store
        self._queue = queue
        self._last_recluster = last_recluster
        self._web_app = web_app
        self.notifier = notifier if notifier is not None else Notifier()
        self.web: Optional[WebServer] = None
        self._clock = clock
        self._next_status = 0.0
        self._next_ping = 0.0
        self._busy_since: Optional[float] = None
        self._unhealthy: Optional[str] = None
        self._recluster_seen: Optional[object] = None

    @property
    def wait_s(self) -> float:
        """How long the main loop may sleep between ticks."""
        interval = self.notifier.watchdog_interval
        return 1.0 if interval is None else max(0.05, min(1.0, interval / 2))

    def start(self) -> None:
        """Serve the web page (when enabled), then tell systemd the daemon is ready.

        Called after the store is open and the watcher started (its first tick is the catch-up
        scan), which is what READY=1 promises."""
        cfg = self.config
        if cfg.web.enabled and self._web_app is not None:
            self.web = WebServer(self._web_app(), cfg.web.host, cfg.web.port)
            self.web.start()
            log.info("web page on %s", self.web.url)
        self.tick()
        self.notifier.ready(self.telemetry.status_line())
        log.info("ready")

    def tick(self) -> None:
        """Once per main-loop pass: gauges, health, the watchdog ping, STATUS= and status.json."""
        now = self._clock()
        depth, pending = self._queue()
        self.telemetry.tick(depth, pending)
        self._count_reclusters()
        self._check_health(depth, now)
        if self._unhealthy is None and self.notifier.watchdog_interval is not None \
                and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + self.notifier.watchdog_interval
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            counts = self.telemetry.read_store(self.store) if self.store is not None else None
            self.notifier.status(self.telemetry.status_line(counts))
            self.telemetry.write_snapshot(self.config.state_dir)

    def _count_reclusters(self) -> None:
        # IdentityService replaces ``last_counts`` after every recluster it applies; reclusters
        # take seconds, so one tick never sees two.
        counts = self._last_recluster()
        if counts is not None and counts is not self._recluster_seen:
            self._recluster_seen = counts
            self.telemetry.reclusters.inc()

    def _check_health(self, depth: int, now: float) -> None:
        dead = [t.name for c in self.components for t in c.threads() if not t.is_alive()]
        if depth == 0:
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = now
        reason = None
        if dead:
            reason = f"thread(s) stopped: {', '.join(dead)}"
        elif self._busy_since is not None and \
                now - max(self._busy_since, self.telemetry.last_progress) > STALL_S:
            reason = f"no file finished for {STALL_S:.0f} s with {depth} in the queue"
        if reason != self._unhealthy:
            if reason:
                log.error("unhealthy: %s; the systemd watchdog will restart the daemon", reason)
            else:
                log.info("healthy again")
        self._unhealthy = reason
        self.telemetry.up.set(0 if reason else 1)
        self.telemetry.unhealthy_reason = reason

    def reloading(self) -> None:
        self.notifier.reloading()

    def reloaded(self, new: Config) -> None:
        """After ``Daemon.reload``: apply the log level, say what needs a restart, READY=1 again."""
        old, self.config = self.config, new
        if new is not old:
            logging.getLogger().setLevel(new.log_level.upper())
            fixed = [k for k in RESTART_KEYS if getattr(new, k) != getattr(old, k)]
            if fixed:
                log.warning("changed in the config but used only at start: %s; restart facesortd "
                            "(systemctl restart facesortd) for them to take effect", ", ".join(fixed))
        self.notifier.ready(self.telemetry.status_line())

    def stopping(self) -> None:
        depth = self._queue()[0]
        self.notifier.stopping(f"stopping: finishing {depth} file(s) already taken")

    def close(self) -> None:
        """Stop the web server (joined); the daemon's own close() follows."""
        if self.web is not None:
            self.web.stop()
            self.web = None
        self.telemetry.write_snapshot(self.config.state_dir)
        self.notifier.close()


class JournalFormatter(logging.Formatter):
    """Prefixes every line with its syslog priority (``<4>``), which journald strips and keeps
    as the entry's level, so ``journalctl -p warning`` shows warnings and errors only."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                  logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in self.PRIORITIES if lv <= record.levelno), default=logging.DEBUG)
        prefix = f"<{self.PRIORITIES[level]}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))
