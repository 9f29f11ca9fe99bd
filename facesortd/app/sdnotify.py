"""The systemd notify protocol, without a dependency: one datagram to ``$NOTIFY_SOCKET``.

With ``Type=notify`` systemd waits for ``READY=1`` before it calls the service started, shows
``STATUS=`` in ``systemctl status``, and with ``WatchdogSec=`` restarts the service when no
``WATCHDOG=1`` arrives within ``$WATCHDOG_USEC``. Outside systemd (no ``NOTIFY_SOCKET``) every call
is a cheap no-op, so the daemon calls these unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping, Optional

log = logging.getLogger("facesortd.sdnotify")


def _address(value: str) -> Optional[str]:
    """A socket path, or an abstract-namespace name given as ``@name`` (-> ``\\0name``)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock:... and other forms are not for a local service


class Notifier:
    """Sends notify messages for this process; ``enabled`` is False outside systemd."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: Optional[socket.socket] = None
        self._warned = False
        self.watchdog_usec = self._watchdog_usec(env)

    @staticmethod
    def _watchdog_usec(env: Mapping[str, str]) -> Optional[int]:
        """``$WATCHDOG_USEC`` when it is meant for this process (``$WATCHDOG_PID`` absent or ours)."""
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        return usec if usec > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> Optional[float]:
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False (logged once) when it cannot."""
        if self.address is None or not lines:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never let a slow reader block the main loop: a full queue drops the message.
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False

    def ready(self, status: Optional[str] = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 match the READY=1 that ends the reload.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: Optional[str] = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
