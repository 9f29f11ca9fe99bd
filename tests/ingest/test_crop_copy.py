"""Detect mode finds faces on a small copy but cuts them from a copy twice as large."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from facesortd.config import parse_config
from facesortd.errors import ConfigError
from facesortd.ingest.imageio import decode, shrink
from facesortd.store.database import Store

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def test_shrink_halves_exactly_and_resizes_otherwise():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    same, grown = shrink(rgb, 400)
    assert same is rgb and grown == 1.0
    half, grown = shrink(rgb, 205)  # 400 / 2 = 200 is within the draft slack of 205
    assert half.shape == (150, 200, 3) and grown == 2.0
    mean = rgb.reshape(150, 2, 200, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(half - mean).max() <= 1.0
    odd, grown = shrink(rgb, 300)
    assert odd.shape == (225, 300, 3) and grown == pytest.approx(400 / 300)


def test_crop_copy_key(tmp_path):
    config = parse_config("detector:\n  max_side_px: 800\n", tmp_path / "c.yaml")
    assert config.detector.crop_max_side_px == "auto" and config.detector.crop_side() == 1600
    config = parse_config("detector:\n  crop_max_side_px: 1024\n", tmp_path / "c.yaml")
    assert config.detector.crop_side() == 1024
    with pytest.raises(ConfigError) as info:
        parse_config("detector:\n  max_side_px: 1200\n  crop_max_side_px: 1000\n", tmp_path / "c.yaml")
    [msg] = info.value.problems
    assert msg.startswith("detector.crop_max_side_px:") and "1200" in msg


def _vectors_and_boxes(run_once, root: Path, photo: Path, crop_side: int) -> tuple[np.ndarray, list]:
    (root / "inbox").mkdir(parents=True)
    shutil.copy(photo, root / "inbox" / photo.name)
    text = ("inboxes:\n  - path: inbox\n    mode: detect\n"
            "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
            "embedder:\n  name: dlib\n  batch_size: 16\n  max_wait_ms: 50\n"
            f"detector:\n  min_face_px: 20\n  max_side_px: 640\n  crop_max_side_px: {crop_side}\n"
            "web:\n  enabled: false\n")
    config = parse_config(text, root / "facesortd.yaml")
    run_once(config)
    with Store.open(config.state_dir) as store:
        ids, matrix = store.vectors()
        boxes = {r[0]: r[1:] for r in store._conn.execute(
            "SELECT id, box_x1, box_y1, box_x2, box_y2 FROM faces")}
    return matrix, [boxes[int(i)] for i in ids]


def test_faces_cut_from_the_larger_copy_embed_closer_to_full_resolution(tmp_path, data_dir, run_once):
    """A 1986 px group photo found at 640 px: every face is under 80 px there. Embedded from
    the 1280 px copy, the vectors sit much nearer those of full-resolution crops (measured:
    median dlib distance 0.05 against 0.14 from the detection copy)."""
    from facesortd.config import EmbedderConfig
    from facesortd.models.embedders import create_embedder

    photo = data_dir / "scenes" / "bald_guys.jpg"
    model = create_embedder(EmbedderConfig(name="dlib"))
    model.load()
    full = decode(photo)
    distances = {}
    for side in (640, 1280):
        matrix, boxes = _vectors_and_boxes(run_once, tmp_path / str(side), photo, side)
        assert len(boxes) >= 10
        ref = model.embed([model.prepare(full.rgb, box) for box in boxes])
        distances[side] = float(np.median(np.linalg.norm(matrix - ref, axis=1)))
    assert distances[1280] < 0.6 * distances[640], distances


def test_pixels_waiting_for_the_model_are_bounded(tmp_path, monkeypatch):
    """A hand-over waits while the queued pixels would pass the bound, and goes on as soon as
    the model takes some; one over the bound on its own still passes (no deadlock)."""
    import threading

    from facesortd.inbox.jobs import Job
    from facesortd.ingest import model_stage as pipeline_model
    from facesortd.ingest.ledger import Stats, Work

    monkeypatch.setattr(pipeline_model, "MAX_QUEUED_BYTES", 3_000_000)
    config = parse_config("{}", tmp_path / "c.yaml")
    stage = pipeline_model.ModelStage(config, None, None, None, None, Stats())

    def work(i: int) -> Work:
        w = Work(Job(tmp_path / f"{i}.jpg", tmp_path, "detect", 1, 0), f"{i:064x}", 1)
        w.crop_rgb = np.zeros((1000, 1000, 3), np.uint8)   # 3 MB
        w.rgb = np.zeros((500, 500, 3), np.uint8)          # 0.75 MB
        return w

    stage.hand_over([work(0)])  # 3.75 MB: over the bound, but alone
    second = threading.Thread(target=stage.hand_over, args=([work(1)],))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waits for room
    _, size = stage._prepared.get_nowait()
    stage._taken(size)
    second.join(5)
    assert not second.is_alive() and stage._prepared.qsize() == 1
