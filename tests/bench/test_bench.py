"""The benchmarks run end to end on a few real files and report consistent figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facesortd.bench.detect import bench_detect, camera_photos
from facesortd.bench.ingest import bench_ingest

pytest.importorskip("facenet_pytorch")


def test_bench_ingest_reports_pipeline_bare_model_and_old_tool(data_dir):
    out = bench_ingest(mode="aligned", embedder="facenet", images=data_dir / "faces_cropped",
                       count=12, batch_size=4, repeats=1, bare_seconds=0)
    assert out["files"] == 12
    assert out["store_counts"]["images"]["done"] == 12
    assert out["store_counts"]["faces"] == 12
    run = out["runs"][0]
    assert run["faces"] == 12 and run["batches"] == 3
    for key in ("pipeline_images_per_s", "model_images_per_s"):
        assert out[key] > 0
    assert out["ratio"] == pytest.approx(run["images_per_s"] / run["model_images_per_s"], rel=1e-2)
    assert out["old_tool"]["images_per_s"] > 0
    assert out["vs_old_tool"] == pytest.approx(
        run["images_per_s"] / run["old_tool_images_per_s"], rel=1e-2)
    assert 0 < out["model_busy_fraction"] <= 1.0
    assert out["model"]["precision"] in ("fp32", "bf16")


def test_camera_photos_are_distinct_12_megapixel_jpegs(tmp_path, data_dir):
    paths = camera_photos(tmp_path, data_dir / "scenes", 2, size=(400, 300))
    with Image.open(paths[0]) as a, Image.open(paths[1]) as b:
        assert a.format == "JPEG" and a.size == (400, 300)
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_bench_detect_breakdown_on_big_photos(data_dir):
    out = bench_detect(data_dir / "scenes", count=3, repeats=1, size=(1600, 1200))
    assert out["files"] == 3
    assert out["faces_per_run"] >= 1
    br = out["breakdown_ms_per_image"]
    assert br["decode (worker threads, summed)"] > 0 and br["detect (model thread)"] > 0
    assert br["embed (model thread)"] > 0
    assert out["pipeline_images_per_s"] > 0
    alone = out["detector_vs_facenet_pytorch"]
    assert alone["input"] == "1024x768" and alone["ours_ms_per_image"] > 0
    assert alone["speedup_vs_stock"] == pytest.approx(
        alone["stock_mtcnn_ms_per_image"] / alone["ours_ms_per_image"], rel=0.02)
    assert alone["faces_ours"] >= 1 and alone["faces_stock_p_over_min_probability"] >= 1


def test_bench_web_times_every_route_and_a_thumbnail(tmp_path, data_dir):
    from facesortd.bench.web import TARGET_MS, _get, bench_web
    from facesortd.config import parse_config
    from facesortd.errors import FacesortdError
    from facesortd.store.database import Store
    from facesortd.web import create_app

    photo = max(data_dir.glob("faces/*/*.jpg"), key=lambda p: p.stat().st_size)
    out = bench_web(faces=2000, repeats=2, photo=photo, keep=tmp_path)
    store = out["store"]
    assert store["faces"] == 2000 and store["people"] + store["hidden"] >= 90 and store["open_suggestions"] >= 10
    assert store["history_rows"] > 50 and 0 < store["named"] < store["people"]
    assert store["largest_identity"]["faces"] > 100 and store["largest_pages"] >= 2
    assert set(out["routes"]) == {
        "GET /", "GET /?page=<last>", "GET /?q=<a name>", "GET /people/<largest>",
        "GET /people/<largest>?page=<last>", "GET /unassigned", "GET /suggestions", "GET /history",
        "GET /api/identities", "GET /api/identities/<largest>",
        "GET /?sort=name", "GET /?sort=doubt", "GET /people/<largest>?order=date", "GET /review",
        "GET /review?page=<middle>",
        "GET /api/review", "GET /api/review?page=<last full>", "GET /hidden", "GET /photo/<id>", "GET /api/images/<id>"}
    assert out["doubt_scores_s"] > 0 and store["review_queue"] > 1000 and store["hidden"] == 10
    for route in out["routes"].values():
        assert 0 < route["min_ms"] <= route["median_ms"] <= route["p95_ms"] <= route["max_ms"]
        assert route["bytes"] > 0 and route["under_target"] == (route["median_ms"] < TARGET_MS)
    assert out["routes"]["GET /people/<largest>?page=<last>"]["url"].endswith(
        f"?page={store['largest_pages']}")
    thumb = out["thumbnail"]
    assert thumb["photo"] == photo.name and thumb["thumb_bytes"] > 500
    assert thumb["first_miss_ms"] > 0 and thumb["hit"]["median_ms"] > 0
    # the same check that timed every route refuses a page that is not a 200
    config = parse_config("web:\n  enabled: true\n", tmp_path / "facesortd.yaml")
    with Store.open(config.state_dir, load_vectors=False) as opened:
        client = create_app(config, opened).test_client()
        assert _get(client, out["routes"]["GET /people/<largest>"]["url"], lambda r: True)[1] > 0
        with pytest.raises(FacesortdError, match="gave 404"):
            _get(client, "/people/999999", lambda r: True)


def test_bench_dlib_runtimes_on_the_same_chips(data_dir):
    """bench ingest --embedder dlib's comparison: both runtimes embed the same chips; the figures
    are there and the vectors agree (speed itself is not asserted: a benchmark, not a test)."""
    pytest.importorskip("dlib")
    from facesortd.bench.runtimes import chip_throughput

    r = chip_throughput(data_dir / "faces_cropped", count=6, batch_size=4, device="cpu",
                        precision="auto", seconds=0.2)
    assert r["chips"] == 6 and r["torch_faces_per_s"] > 0 and r["dlib_faces_per_s"] > 0
    # the ratio of the unrounded figures (each printed figure is rounded on its own)
    assert r["ratio"] == pytest.approx(r["torch_faces_per_s"] / r["dlib_faces_per_s"], rel=0.05)
    assert r["min_cosine"] >= 0.9999
    assert r["torch"]["runtime"].startswith("torch") and r["dlib"]["runtime"].startswith("dlib")
