"""What makes ``facesortd run`` a well-behaved service, beside the daemon's own threads.

``Service`` serves the web app in a thread, tells systemd READY/STATUS/WATCHDOG/STOPPING, keeps
the telemetry gauges current, writes ``<state_dir>/status.json`` for ``facesortd status``, and
checks that the daemon is healthy: every thread alive and the pipeline making progress. While it
is not, the watchdog pings stop, so systemd restarts a hung daemon (``WatchdogSec=``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from facesortd.app.sdnotify import Notifier
from facesortd.config import Config
from facesortd.errors import FacesortdError

if TYPE_CHECKING:
    from facesortd.app.daemon import Daemon

log = logging.getLogger("facesortd.service")

STATUS_EVERY_S = 5.0
#: A non-empty queue with no file or batch finished for this long means the pipeline hangs.
STALL_S = 300.0
#: Threads that must stay alive while the daemon runs (the pipeline's and the watcher's names).
REQUIRED_THREADS = ("facesortd-model", "facesortd-prep-", "facesortd-watch-worker")
#: Threads of optional parts, required while the daemon has that part: (attribute, thread name).
OPTIONAL_THREADS = (("identities", "identities"), ("placer_loop", "facesortd-placer"))
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


class Service:
    """Wraps a running ``Daemon``: web page, systemd notifications, health and status figures."""

    def __init__(self, daemon: "Daemon", notifier: Optional[Notifier] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.daemon = daemon
        self.telemetry = daemon.telemetry
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
        cfg = self.daemon.config
        if cfg.web.enabled:
            from facesortd.web import Control, create_app

            d = self.daemon   # corrections made on the page: files follow, recluster on request
            control = Control(changed=d.notify_changed,
                              request_recluster=lambda: d.identities.request_recluster())
            app = create_app(cfg, d.store, self.telemetry, control=control)
            self.web = WebServer(app, cfg.web.host, cfg.web.port)
            self.web.start()
            log.info("web page on %s", self.web.url)
        self.tick()
        self.notifier.ready(self.telemetry.status_line())
        log.info("ready")

    def tick(self) -> None:
        """Once per main-loop pass: gauges, health, the watchdog ping, STATUS= and status.json."""
        d = self.daemon
        now = self._clock()
        depth = d.pipeline.queue_depth if d.pipeline is not None else 0
        pending = d.watcher.pending_count() if d.watcher is not None else 0
        self.telemetry.tick(depth, pending)
        self._count_reclusters()
        self._check_health(depth, now)
        if self._unhealthy is None and self.notifier.watchdog_interval is not None \
                and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + self.notifier.watchdog_interval
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            counts = self.telemetry.read_store(d.store) if d.store is not None else None
            self.notifier.status(self.telemetry.status_line(counts))
            self.telemetry.write_snapshot(d.config.state_dir)

    def _count_reclusters(self) -> None:
        # IdentityService replaces ``last_counts`` after every recluster it applies; reclusters
        # take seconds, so one tick never sees two.
        counts = getattr(getattr(self.daemon, "identities", None), "last_counts", None)
        if counts is not None and counts is not self._recluster_seen:
            self._recluster_seen = counts
            self.telemetry.reclusters.inc()

    def _check_health(self, depth: int, now: float) -> None:
        alive = {t.name for t in threading.enumerate() if t.is_alive()}
        required = list(REQUIRED_THREADS) + [name for attr, name in OPTIONAL_THREADS
                                             if getattr(self.daemon, attr, None) is not None]
        dead = [n for n in required if not any(a.startswith(n) for a in alive)]
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

    def reloading(self) -> Config:
        self.notifier.reloading()
        return self.daemon.config

    def reloaded(self, old: Config) -> None:
        """After ``Daemon.reload``: apply the log level, say what needs a restart, READY=1 again."""
        new = self.daemon.config
        if new is not old:
            logging.getLogger().setLevel(new.log_level.upper())
            fixed = [k for k in RESTART_KEYS if getattr(new, k) != getattr(old, k)]
            if fixed:
                log.warning("changed in the config but used only at start: %s; restart facesortd "
                            "(systemctl restart facesortd) for them to take effect", ", ".join(fixed))
        self.notifier.ready(self.telemetry.status_line())

    def stopping(self) -> None:
        depth = self.daemon.pipeline.queue_depth if self.daemon.pipeline is not None else 0
        self.notifier.stopping(f"stopping: finishing {depth} file(s) already taken")

    def close(self) -> None:
        """Stop the web server (joined); the daemon's own close() follows."""
        if self.web is not None:
            self.web.stop()
            self.web = None
        self.telemetry.write_snapshot(self.daemon.config.state_dir)
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


def progress_counts(daemon: "Daemon") -> tuple[int, int]:
    """(files done, files known) for the ``run --once`` progress line."""
    done = daemon.telemetry.files_finished()
    if daemon.pipeline is not None:
        done += daemon.pipeline.stats.files_skipped
    busy = daemon.pipeline.queue_depth if daemon.pipeline is not None else 0
    pending = daemon.watcher.pending_count() if daemon.watcher is not None else 0
    return done, done + busy + pending
