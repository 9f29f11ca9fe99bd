"""Which Host names the review page answers, and which proxies it believes (DNS rebinding).

Binding to 127.0.0.1 keeps other machines out, not the user's own browser: any web site can make
its own name resolve to 127.0.0.1 (DNS rebinding), and the browser then lets that site's pages
read the answers, sending the site's name as ``Host`` and ``Origin``. So every request must name
a host this page serves, and a change must come from a page of one (``Origin``):

- ``127.0.0.1``, ``localhost`` and ``[::1]`` when the page listens on loopback or on every address;
- ``web.host`` itself (``0.0.0.0`` too: the address the log shows; an IP typed by the user,
  never a name a rebinding site controls);
- each ``web.allowed_hosts`` entry (``name`` any port, ``name:port`` that port only).

The loopback names and ``web.host`` must carry the port the server really listens on (so
``--port 0`` works; no port means 80, or 443 over https). Anything else is answered ``421`` with
the setting to change, logged once per host.

A request from one of ``web.trusted_proxies`` has its X-Forwarded-For, -Proto and -Host believed
(werkzeug's ProxyFix, one hop): the forwarded Host is the one checked, with any port for the names
above (the proxy's port is the proxy's business), and over https the login cookie is ``Secure``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from flask import Response, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix

from facesortd.config import WebConfig, split_host

log = logging.getLogger("facesortd.web")

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
DEFAULT_PORTS = {"http": 80, "https": 443}
#: WSGI environ keys ``ProxyGate`` sets for ``HostPolicy``.
LISTEN_PORT = "facesortd.listen_port"
VIA_PROXY = "facesortd.via_proxy"
#: Refused hosts remembered (each logged once); past this, further ones are not logged.
MAX_LOGGED = 256


class HostPolicy:
    """The allow-list of one app, from its ``web`` config."""

    def __init__(self, web: WebConfig):
        implicit = set(LOOPBACK_NAMES) if web.is_loopback or web.is_wildcard else set()
        host = f"[{web.host}]" if ":" in web.host and not web.host.startswith("[") else web.host
        try:
            implicit.add(split_host(host)[0])
        except ValueError:
            pass   # "" (every address): not a name a browser could send
        self.implicit = frozenset(implicit)
        #: allowed_hosts: name -> the ports it may carry (None: any)
        self.extra: dict[str, Optional[set[int]]] = {}
        for entry in web.allowed_hosts:
            name, port = split_host(entry)
            if port is None:
                self.extra[name] = None
            elif self.extra.get(name, set()) is not None:
                self.extra.setdefault(name, set()).add(port)
        self._refused: set[str] = set()
        self._lock = threading.Lock()

    def allows(self, name: str, port: int, environ: dict[str, Any]) -> bool:
        """``name`` (normalised by ``split_host``) at ``port`` is one this page serves."""
        if name in self.extra:
            ports = self.extra[name]
            if ports is None or port in ports:
                return True
        if name in self.implicit:
            return bool(environ.get(VIA_PROXY)) or port == _listen_port(environ)
        return False

    def allows_netloc(self, netloc: str, scheme: str, environ: dict[str, Any]) -> bool:
        """``host[:port]`` as a Host header or an Origin carries it; no port: the scheme's."""
        try:
            name, port = split_host(netloc)
        except ValueError:
            return False
        if port is None:
            port = DEFAULT_PORTS.get(scheme, 0)
        return self.allows(name, port, environ)

    def first_refusal(self, host: str) -> bool:
        """True the first time ``host`` is refused (so it is logged once; past MAX_LOGGED names,
        one last line says no more are logged)."""
        key = host.lower()
        with self._lock:
            if key in self._refused or len(self._refused) > MAX_LOGGED:
                return False
            self._refused.add(key)
            if len(self._refused) > MAX_LOGGED:
                log.warning("refused requests for more than %d host names; no more are logged",
                            MAX_LOGGED)
                return False
            return True


def _listen_port(environ: dict[str, Any]) -> int:
    try:
        return int(environ.get(LISTEN_PORT) or environ.get("SERVER_PORT") or 0)
    except ValueError:
        return 0


def policy() -> HostPolicy:
    return current_app.extensions["facesortd"]["hosts"]


def check_host() -> Optional[Response]:
    """``before_request`` on every route: refuse a Host this page does not serve."""
    from facesortd.web.security import error

    host = request.environ.get("HTTP_HOST")
    if host is None:
        return None   # HTTP/1.0 without Host: browsers always send one, so no rebinding either
    if policy().allows_netloc(host, request.scheme, request.environ):
        return None
    shown = host[:100]
    if policy().first_refusal(host):
        log.warning("refused a request for Host %r from %s: not a name this page serves; if it "
                    "is yours, add it to web.allowed_hosts (logged once per host)",
                    shown, request.remote_addr)
    return error(421, f"this page does not answer to the host name {shown!r}; if it is yours, "
                      "add it to web.allowed_hosts in the config")


def origin_allowed() -> bool:
    """A browser's ``Origin`` (when sent) must be a page this server serves; scripts send none.
    Checked against the allow-list, never against the request's own Host: after a DNS rebinding
    both come from the attacker."""
    origin = request.headers.get("Origin")
    if not origin:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc or parts.path not in ("", "/"):
        return False   # "null" (a sandboxed or file: page), or not an origin at all
    return policy().allows_netloc(parts.netloc, parts.scheme, request.environ)


class ProxyGate:
    """WSGI middleware: note the port the server listens on, then believe X-Forwarded-For,
    -Proto and -Host (ProxyFix, one hop) only from an address in ``web.trusted_proxies``."""

    def __init__(self, app: Any, proxies: Iterable[str]):
        self.app = app
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ[LISTEN_PORT] = environ.get("SERVER_PORT")
        if self.networks and self.trusts(environ.get("REMOTE_ADDR")):
            environ[VIA_PROXY] = True
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)

    def trusts(self, address: Optional[str]) -> bool:
        try:
            ip = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)   # ::ffff:10.0.0.1 on a dual-stack socket
        return any(ip in net or (mapped is not None and mapped in net) for net in self.networks)
