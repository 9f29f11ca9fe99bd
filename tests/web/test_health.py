"""/healthz and /metrics through the Flask test client, over a real store."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from facesortd.config import parse_config
from facesortd.store.database import Store
from facesortd.telemetry import BATCH_SECONDS_BUCKETS, BATCH_SIZE_BUCKETS, Telemetry, parse_prometheus
from facesortd.web import create_app


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "state")
    s.bind_model("dlib-resnet-v1", 128)
    image = s.add_image(tmp_path / "inbox" / "a.jpg", tmp_path / "inbox", "ab" * 32, 10, 1)
    v = np.ones(128, np.float32) / np.sqrt(128)
    s.add_faces(image, [((0, 0, 10, 10), 1.0, v), ((5, 5, 15, 15), 0.99, v)])
    s.add_image(tmp_path / "inbox" / "b.jpg", tmp_path / "inbox", None, 0, 1, status="error",
                error="the file is empty (0 bytes)")
    yield s
    s.close()


def make_app(tmp_path, store, telemetry=None, web="{}"):
    config = parse_config(f"web: {web}\n", tmp_path / "facesortd.yaml")
    return create_app(config, store, telemetry, test_config={"TESTING": True})


def test_healthz_and_metrics(tmp_path, store):
    telemetry = Telemetry()
    telemetry.file_finished("done")
    client = make_app(tmp_path, store, telemetry).test_client()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "ok" and r.json["problems"] == []
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    m = parse_prometheus(r.get_data(as_text=True))
    assert m['facesortd_store_images{status="done"}'] == 1
    assert m['facesortd_store_images{status="error"}'] == 1
    assert m["facesortd_store_faces"] == 2 and m["facesortd_store_faces_unassigned"] == 2
    assert m['facesortd_files_total{outcome="done"}'] == 1


def test_without_a_daemon_the_store_figures_are_still_served(tmp_path, store):
    client = make_app(tmp_path, store).test_client()
    m = parse_prometheus(client.get("/metrics").get_data(as_text=True))
    assert m["facesortd_store_faces"] == 2
    assert client.get("/healthz").json == {"status": "ok", "problems": []}


def test_unhealthy_daemon_and_closed_store_answer_503(tmp_path, store):
    telemetry = Telemetry()
    telemetry.up.set(0)
    telemetry.unhealthy_reason = "thread(s) stopped: facesortd-model"
    client = make_app(tmp_path, store, telemetry).test_client()
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json["problems"] == ["thread(s) stopped: facesortd-model"]
    store.close()
    r = make_app(tmp_path, store).test_client().get("/healthz")
    assert r.status_code == 503 and r.json["problems"][0].startswith("store:")


def test_token_guards_everything_but_healthz(tmp_path, store):
    client = make_app(tmp_path, store, web="{host: 0.0.0.0, token: s3cret}").test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_web_server_serves_stops_and_names_a_busy_port(tmp_path, store):
    import socket
    import urllib.request

    from facesortd.app.supervisor import WebServer
    from facesortd.errors import FacesortdError

    app = make_app(tmp_path, store, Telemetry())
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        with urllib.request.urlopen(server.url + "healthz", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(FacesortdError, match=f"cannot listen on 127.0.0.1:{server.port}"):
            WebServer(app, "127.0.0.1", server.port)
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_metrics_parse_with_prometheus_clients_parser_after_a_real_run(tmp_path, data_dir):
    """A real `run --once` (dlib, aligned crops, a duplicate, an empty file), then /metrics read
    back by prometheus_client's own parser: every family, its type, and the figures of the run."""
    import shutil

    from prometheus_client.parser import text_string_to_metric_families

    from facesortd.app.daemon import Daemon

    pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")
    (tmp_path / "inbox").mkdir()
    crops = sorted((data_dir / "faces_cropped").rglob("*.jp*g"))[:5]
    for p in crops:
        shutil.copy(p, tmp_path / "inbox" / f"{p.parent.name}_{p.name}")
    shutil.copy(crops[0], tmp_path / "inbox" / "again.jpg")      # same bytes: a duplicate
    (tmp_path / "inbox" / "empty.jpg").write_bytes(b"")           # a bad image
    text = ("inboxes:\n  - path: inbox\n    mode: aligned\n"
            "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
            "embedder:\n  name: dlib\n  batch_size: 16\n  max_wait_ms: 50\nweb:\n  enabled: false\n")
    (tmp_path / "facesortd.yaml").write_text(text)
    config = parse_config(text, tmp_path / "facesortd.yaml")
    daemon = Daemon(config)
    daemon.run_once(timeout=300)

    with Store.open(config.state_dir) as store:
        app = create_app(config, store, daemon.telemetry, test_config={"TESTING": True})
        r = app.test_client().get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
    families = {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}
    # The parser names a counter's family without `_total`; its samples keep it.
    assert {name: f.type for name, f in families.items()} == {
        "facesortd_files": "counter", "facesortd_errors": "counter",
        "facesortd_faces_ingested": "counter", "facesortd_reclusters": "counter",
        "facesortd_batch_faces": "histogram", "facesortd_batch_seconds": "histogram",
        "facesortd_queue_depth": "gauge", "facesortd_watcher_pending": "gauge",
        "facesortd_images_per_second": "gauge", "facesortd_store_images": "gauge",
        "facesortd_store_faces": "gauge", "facesortd_store_faces_unassigned": "gauge",
        "facesortd_store_identities": "gauge", "facesortd_store_files": "gauge",
        "facesortd_uptime_seconds": "gauge", "facesortd_healthy": "gauge"}

    def values(family: str) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families[family].samples}

    files = values("facesortd_files")
    assert {labels[0][1]: v for (name, labels), v in files.items()} == {
        "done": 5, "noface": 0, "duplicate": 1, "error": 1, "gone": 0}
    assert {name for name, _ in files} == {"facesortd_files_total"}
    errors = {labels[0][1]: v for (_, labels), v in values("facesortd_errors").items()}
    assert errors == {"bad_image": 1, "model": 0, "store": 0, "unexpected": 0}
    assert values("facesortd_faces_ingested") == {("facesortd_faces_ingested_total", ()): 5}

    for name, bounds in (("facesortd_batch_faces", BATCH_SIZE_BUCKETS),
                         ("facesortd_batch_seconds", BATCH_SECONDS_BUCKETS)):
        samples = families[name].samples
        buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name == name + "_bucket"]
        assert [b for b, _ in buckets] == [float(b) for b in bounds] + [math.inf]
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)                          # cumulative
        total = {s.name: s.value for s in samples if s.name != name + "_bucket"}
        assert set(total) == {name + "_count", name + "_sum"}   # no `_created` series
        assert total[name + "_count"] == counts[-1] >= 1
    batch = {s.name: s.value for s in families["facesortd_batch_faces"].samples}
    assert batch["facesortd_batch_faces_sum"] == 5

    stored = {labels[0][1]: v for (_, labels), v in values("facesortd_store_images").items()}
    assert stored["done"] == 5 and stored["error"] == 1
    assert values("facesortd_store_faces") == {("facesortd_store_faces", ()): 5}
    assert values("facesortd_store_identities")[("facesortd_store_identities", ())] >= 1
    files = {labels[0][1]: v for (_, labels), v in values("facesortd_store_files").items()}
    assert files == {"groups": 0, "companions": 0, "other": 0}
    assert values("facesortd_healthy") == {("facesortd_healthy", ()): 1}
    assert values("facesortd_uptime_seconds")[("facesortd_uptime_seconds", ())] > 0
