"""The Host allow-list (DNS rebinding), trusted proxies and private caching, through Flask's test
client over a real store; the real server and a real browser: ``e2e/test_web_rebinding.py``."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from facesortd.cli import main
from facesortd.config import parse_config
from facesortd.web.hosts import LISTEN_PORT, HostPolicy

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"   # the test client's server listens on this port
WEB = "{allowed_hosts: [Photos.Example.LAN., 'lan.example:8443'], trusted_proxies: [10.0.0.1]}"
FOREIGN = ["attacker.test", f"attacker.test:{PORT}", f"localhost.attacker.test:{PORT}",
           f"127.0.0.1.attacker.test:{PORT}", "localhost:9999", "127.0.0.1",   # wrong port
           "lan.example", "lan.example:8444", f"evil:{PORT}@localhost", f"[::2]:{PORT}", "",
           f"photos.example.lan.attacker.test:{PORT}"]
ALLOWED = [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"LOCALHOST:{PORT}", f"[::1]:{PORT}",
           f"[0:0::1]:{PORT}", "photos.example.lan", "photos.example.lan:1234",
           "PHOTOS.example.lan.", "lan.example:8443"]


@pytest.fixture
def hosted(open_review, tmp_path):
    r = open_review(tmp_path, web=WEB)
    yield r
    r.store.close()


def request(review, method: str, path: str, host: str, **kwargs):
    headers = {"Host": host, **kwargs.pop("headers", {})}
    return review.client.open(path, method=method, base_url=BASE, headers=headers, **kwargs)


def snapshot(review) -> dict:
    """Every row of every table of the store, and every file of the library and the inbox."""
    conn = sqlite3.connect(f"file:{review.store.path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables}
    finally:
        conn.close()
    files = sorted(str(p.relative_to(review.root)) for d in ("library", "inbox")
                   for p in (review.root / d).rglob("*"))
    return {"rows": rows, "files": files}


def routes(app) -> list[tuple[str, str]]:
    """(method, url) of every route of the app, with ids that exist."""
    adapter = app.url_map.bind("localhost")
    out = []
    for rule in app.url_map.iter_rules():
        values = {"filename": "review.js"} if rule.endpoint == "static" else \
            {arg: 1 for arg in rule.arguments}
        for method in sorted(rule.methods):
            out.append((method, adapter.build(rule.endpoint, values, method=method)))
    return out


def test_every_route_refuses_a_foreign_host_and_changes_nothing(hosted):
    csrf = hosted.csrf   # as if the attacker had it: the Host check comes first anyway
    before = snapshot(hosted)
    checked = routes(hosted.app) + [("GET", "/no/such/page"), ("POST", "/no/such/api")]
    paths = {url for _, url in checked}
    assert {"/", "/api/csrf", "/image/1", "/thumb/1.jpg", "/healthz", "/metrics", "/login",
            "/static/review.js", "/api/identities/1/rename", "/api/undo"} <= paths
    body = {"name": "pwned", "into": 2, "faces": [1], "to": "new", "people": [1],
            "box": [0, 0, 10, 10]}
    for host in FOREIGN:
        for method, url in checked:
            r = request(hosted, method, url, host, json=body,
                        headers={"X-CSRF-Token": csrf, "Origin": f"http://{host}"})
            assert r.status_code == 421, (host, method, url, r.status_code)
            if method != "HEAD":
                assert "web.allowed_hosts" in r.json["error"] and csrf not in r.text
            assert "Set-Cookie" not in r.headers
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert snapshot(hosted) == before and hosted.calls == []


def test_every_allowed_name_gets_the_page_the_api_the_media_and_the_changes(hosted):
    people = hosted.people()
    face = hosted.faces("JK_Rowling")[0]
    url = f"/api/identities/{people['JK_Rowling']}/rename"
    for i, host in enumerate(ALLOWED):
        origin = {"Origin": f"http://{host}"} if i % 2 else {}   # a browser, or a script
        page = request(hosted, "GET", "/", host)
        assert page.status_code == 200 and hosted.csrf in page.text, host
        csrf = request(hosted, "GET", "/api/csrf", host).json["csrf_token"]
        for path in (f"/image/{face}", f"/thumb/{face}.jpg", "/healthz", "/metrics",
                     "/static/review.js"):
            assert request(hosted, "GET", path, host).status_code == 200, (host, path)
        r = request(hosted, "POST", url, host, json={"name": f"Name {i}"},
                    headers={"X-CSRF-Token": csrf, **origin})
        assert r.status_code == 200 and r.json["name"] == f"Name {i}", (host, r.json)


def test_origin_is_checked_against_the_allow_list_not_the_host(hosted):
    people = hosted.people()
    url = f"/api/identities/{people['Fujio_Cho']}/rename"
    host = f"localhost:{PORT}"

    def post(origin: str) -> int:
        return request(hosted, "POST", url, host, json={"name": "F"},
                       headers={"X-CSRF-Token": hosted.csrf, "Origin": origin}).status_code

    for refused in ("http://attacker.test", f"http://attacker.test:{PORT}", "null",
                    "http://localhost:9999", f"https://localhost:{PORT}/x", "file://",
                    f"http://localhost:{PORT}.attacker.test"):
        assert post(refused) == 403, refused
    for allowed in (f"http://localhost:{PORT}", f"http://127.0.0.1:{PORT}",
                    f"http://[::1]:{PORT}", "http://photos.example.lan",
                    "https://photos.example.lan", "https://lan.example:8443"):
        assert post(allowed) == 200, allowed
    assert hosted.calls.count("changed") == 6


def test_a_trusted_proxy_is_believed_and_no_one_else(hosted):
    def via(addr: str, host: str, forwarded_host: str, proto: str = "https") -> int:
        return request(hosted, "GET", "/api/identities", host, environ_base={"REMOTE_ADDR": addr},
                       headers={"X-Forwarded-Host": forwarded_host, "X-Forwarded-Proto": proto,
                                "X-Forwarded-For": "192.0.2.7"}).status_code

    # the proxy says which name the browser used: that name is the one checked
    assert via("10.0.0.1", f"127.0.0.1:{PORT}", "photos.example.lan") == 200
    assert via("10.0.0.1", f"127.0.0.1:{PORT}", "localhost:8080") == 200   # the proxy's port
    assert via("10.0.0.1", f"127.0.0.1:{PORT}", "attacker.test") == 421
    assert via("10.0.0.1", f"127.0.0.1:{PORT}", f"attacker.test:{PORT}") == 421
    # anyone else's X-Forwarded-* headers are not believed
    assert via("10.0.0.2", "attacker.test", "photos.example.lan") == 421
    assert via("10.0.0.2", f"127.0.0.1:{PORT}", "attacker.test") == 200
    assert via("127.0.0.1", f"localhost:{PORT}", "attacker.test") == 200


def test_the_login_cookie_is_secure_over_https_behind_a_trusted_proxy(open_review, tmp_path):
    token = "s3cret-token-for-tests"
    r = open_review(tmp_path, web=f"{{host: 0.0.0.0, token: {token}, "
                                  "trusted_proxies: [10.0.0.1], "
                                  "allowed_hosts: [photos.example.lan]}")
    try:
        csrf = r.client.get("/api/csrf", headers={"Authorization": f"Bearer {token}"}).json
        form = {"token": token, "csrf": csrf["csrf_token"], "next": "/"}
        proxied = r.client.post("/login", data=form, environ_base={"REMOTE_ADDR": "10.0.0.1"},
                                headers={"X-Forwarded-Proto": "https",
                                         "X-Forwarded-Host": "photos.example.lan"})
        assert proxied.status_code == 302 and "; Secure" in proxied.headers["Set-Cookie"]
        direct = r.client.post("/login", data=form)
        assert direct.status_code == 302 and "Secure" not in direct.headers["Set-Cookie"]
        # an untrusted address cannot claim https (nor another host)
        spoofed = r.client.post("/login", data=form, environ_base={"REMOTE_ADDR": "10.0.0.9"},
                                headers={"X-Forwarded-Proto": "https"})
        assert spoofed.status_code == 302 and "Secure" not in spoofed.headers["Set-Cookie"]
        # without the token, a foreign Host is still 421, not a redirect to the login form
        assert r.client.get("/", headers={"Host": "attacker.test"}).status_code == 421
        assert r.client.get("/", headers={"Host": "photos.example.lan"}).status_code == 302
    finally:
        r.store.close()


def test_faces_and_photos_are_private_to_the_browser(hosted):
    face = hosted.faces("Paul_McCartney")[0]
    with hosted.store.read() as conn:
        image = conn.execute("SELECT image_id FROM faces WHERE id = ?", (face,)).fetchone()[0]
    for path in (f"/thumb/{face}.jpg", f"/image/{image}"):
        r = hosted.client.get(path)
        cache = r.headers["Cache-Control"]
        assert r.status_code == 200 and r.headers["ETag"], path
        assert "private" in cache and "public" not in cache and "max-age=" in cache, cache
        again = hosted.client.get(path, headers={"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304 and again.headers["Cache-Control"] == cache
    thumb = hosted.client.get(f"/thumb/{face}.jpg").headers["Cache-Control"]
    assert "max-age=31536000" in thumb   # still kept long by the browser
    for path in ("/", f"/people/{hosted.people()['Paul_McCartney']}", "/api/identities"):
        assert hosted.client.get(path).headers["Cache-Control"] == "no-store", path


def test_a_refused_host_is_logged_once(hosted, caplog):
    caplog.set_level(logging.WARNING, logger="facesortd.web")
    for host in ("attacker.test:8799", "attacker.test:8799", "ATTACKER.test:8799", "other.test"):
        assert request(hosted, "GET", "/api/csrf", host).status_code == 421
    refused = [r.getMessage() for r in caplog.records if "refused a request for Host" in r.getMessage()]
    assert len(refused) == 2, refused
    assert "'attacker.test:8799'" in refused[0] and "web.allowed_hosts" in refused[0]
    assert "'other.test'" in refused[1]


def test_refused_names_stop_being_logged_past_a_bound(tmp_path, monkeypatch, caplog):
    """A flood of invented names cannot grow the memory of logged names or flood the journal."""
    from facesortd.web import hosts

    monkeypatch.setattr(hosts, "MAX_LOGGED", 5)
    caplog.set_level(logging.WARNING, logger="facesortd.web")
    policy = HostPolicy(parse_config("{}\n", tmp_path / "f.yaml").web)
    firsts = [policy.first_refusal(f"n{i}.test") for i in range(20)]
    assert firsts == [True] * 5 + [False] * 15 and len(policy._refused) == 6
    assert [r.getMessage() for r in caplog.records] == [
        "refused requests for more than 5 host names; no more are logged"]


@pytest.mark.parametrize("web,allowed,refused", [
    # bound to a LAN name: that name at the port; loopback names do not reach it
    ("{host: photos.lan, token: t}", ["photos.lan:8765", "PHOTOS.LAN.:8765"],
     ["localhost:8765", "photos.lan:8766", "photos.lan"]),
    # bound to every address: loopback names reach it too, and the address the log shows
    ("{host: 0.0.0.0, token: t}", ["localhost:8765", "127.0.0.1:8765", "0.0.0.0:8765"],
     ["192.168.1.5:8765", "0.0.0.0:8766"]),
    ("{host: '::', token: t}", ["[::]:8765", "[::1]:8765"], ["[::2]:8765", "0.0.0.0:8765"]),
    ("{host: '::1'}", ["[::1]:8765", "localhost:8765"], ["[::2]:8765", "::1"]),
    ("{host: 192.168.1.5, token: t, allowed_hosts: [photos.lan]}",
     ["192.168.1.5:8765", "photos.lan:80", "photos.lan:8765"], ["127.0.0.1:8765"]),
])
def test_the_names_each_binding_answers(tmp_path, web, allowed, refused):
    policy = HostPolicy(parse_config(f"web: {web}\n", tmp_path / "f.yaml").web)
    environ = {LISTEN_PORT: "8765"}
    for host in allowed:
        assert policy.allows_netloc(host, "http", environ), host
    for host in refused:
        assert not policy.allows_netloc(host, "http", environ), host


def test_check_config_names_each_malformed_entry(tmp_path, capsys):
    path = tmp_path / "facesortd.yaml"
    path.write_text("web:\n  allowed_hosts: [photos.lan, 'http://photos.lan/', '*', 'a b',\n"
                    "                  'x:99999', '::1']\n"
                    "  trusted_proxies: [10.0.0.1, proxy.lan]\n")
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    for key, says in [("web.allowed_hosts[1]", "not a URL"), ("web.allowed_hosts[2]", "wildcard"),
                      ("web.allowed_hosts[3]", "not a host name"),
                      ("web.allowed_hosts[4]", "1 to 65535"), ("web.allowed_hosts[5]", "brackets"),
                      ("web.trusted_proxies[1]", "IP address or network")]:
        line = next((ln for ln in err.splitlines() if f"{key}:" in ln), "")
        assert says in line, (key, err)
    assert "allowed_hosts[0]" not in err and "trusted_proxies[0]" not in err
    path.write_text("web:\n  allowed_hosts: [Photos.LAN., '[0:0::1]:8443']\n"
                    "  trusted_proxies: ['10.0.0.0/8', '::1']\n")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "- photos.lan\n" in out and "- '[::1]:8443'\n" in out and "- 10.0.0.0/8\n" in out
