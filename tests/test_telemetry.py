"""Telemetry: the Prometheus text format, the rate window, snapshots, the batch timer."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from facesortd.telemetry import (
    Counter,
    Histogram,
    Telemetry,
    TimedEmbedder,
    error_kind,
    format_snapshot,
    parse_prometheus,
    read_snapshot,
)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_counter_labels_are_escaped_and_rendered():
    c = Counter("x_total", "help text", ["kind"])
    c.inc(kind='a "quoted"\nname')
    c.inc(2, kind="b")
    text = "\n".join(c.render())
    assert "# TYPE x_total counter" in text
    assert 'x_total{kind="a \\"quoted\\"\\nname"} 1.0' in text
    assert parse_prometheus(text)['x_total{kind="b"}'] == 2


def test_histogram_buckets_are_cumulative():
    h = Histogram("lat_seconds", "latency", [0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    m = parse_prometheus("\n".join(h.render()))
    assert m['lat_seconds_bucket{le="0.1"}'] == 2
    assert m['lat_seconds_bucket{le="1.0"}'] == 3
    assert m['lat_seconds_bucket{le="+Inf"}'] == 4
    assert m["lat_seconds_count"] == 4 and abs(m["lat_seconds_sum"] - 3.65) < 1e-9


def test_each_telemetry_has_its_own_registry():
    """Two apps (or tests) in one process count apart; nothing lands in prometheus_client's global
    registry; no `_created` series appear beside the ones dashboards know."""
    import prometheus_client

    a, b = Telemetry(), Telemetry()
    a.file_finished("done")
    assert parse_prometheus(a.render())['facesortd_files_total{outcome="done"}'] == 1
    assert parse_prometheus(b.render())['facesortd_files_total{outcome="done"}'] == 0
    assert not any(f.name.startswith("facesortd") for f in prometheus_client.REGISTRY.collect())
    assert "_created" not in a.render()


def test_error_kinds_follow_the_stored_reason():
    assert error_kind("not a supported image (cannot identify the format)") == "bad_image"
    assert error_kind("embedding failed: RuntimeError: boom") == "model"
    assert error_kind("face detection failed: x") == "model"
    assert error_kind("could not record in the store: locked") == "store"
    assert error_kind("unexpected error: KeyError: 1") == "unexpected"


def test_outcomes_rate_and_render():
    clock = Clock()
    t = Telemetry(clock=clock)
    m = parse_prometheus(t.render())
    assert m['facesortd_files_total{outcome="done"}'] == 0 and m["facesortd_faces_ingested_total"] == 0
    t.tick(0, 0)
    for _ in range(20):
        t.file_finished("done")
    t.file_finished("error", "embedding failed: x")
    clock.t += 10
    t.tick(queue_depth=7, pending=300)
    m = parse_prometheus(t.render())
    assert m['facesortd_files_total{outcome="done"}'] == 20
    assert m['facesortd_errors_total{kind="model"}'] == 1
    assert m["facesortd_images_per_second"] == 2.1
    assert m["facesortd_queue_depth"] == 7 and m["facesortd_watcher_pending"] == 300
    # Beyond the window, old samples stop counting: no files for 60 s means 0/s.
    for _ in range(6):
        clock.t += 10
        t.tick(0, 0)
    assert parse_prometheus(t.render())["facesortd_images_per_second"] == 0.0


def test_timed_embedder_measures_each_batch_and_passes_the_rest_through():
    class Inner:
        dim = 4
        crop_size = 160

        def embed(self, faces):
            time.sleep(0.01)
            return np.zeros((len(faces), 4), np.float32)

    t = Telemetry()
    e = TimedEmbedder(Inner(), t)
    assert e.dim == 4 and e.crop_size == 160
    assert e.embed([1, 2, 3]).shape == (3, 4)
    e.embed([1])
    m = parse_prometheus(t.render())
    assert m["facesortd_batch_faces_count"] == 2 and m["facesortd_batch_faces_sum"] == 4
    assert m["facesortd_batch_seconds_sum"] >= 0.02 and m["facesortd_faces_ingested_total"] == 4


def test_snapshot_round_trip_and_stale_ones(tmp_path):
    t = Telemetry()
    t.file_finished("duplicate")
    t.write_snapshot(tmp_path)
    snap = read_snapshot(tmp_path)
    assert snap["pid"] == os.getpid() and snap["files"]["duplicate"] == 1
    text = format_snapshot(snap)
    assert f"running, pid {os.getpid()}" in text and "duplicate 1" in text
    assert "not running" in format_snapshot(None)
    # A snapshot not refreshed for a while, or from a process that is gone, is no daemon.
    old = dict(snap, updated_unix=time.time() - 120)
    (tmp_path / "status.json").write_text(json.dumps(old))
    assert read_snapshot(tmp_path) is None
    dead = dict(snap, pid=2 ** 22 + 12345)
    (tmp_path / "status.json").write_text(json.dumps(dead))
    assert read_snapshot(tmp_path) is None
