"""``facesortd bench detect``: detect mode on 12-megapixel camera JPEGs, printed as JSON.

Two measurements in one run: the real pipeline (decode in the workers, MTCNN and embedding on
the model thread, the store) with where its time goes, and the detector alone beside
facenet-pytorch's own ``MTCNN.detect`` on the same decoded pictures (the ratio between the two
does not depend on the machine the way images/s do).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

from facesortd.bench.common import jobs_for, machine, replicated, rounded, run_pipeline, untrained_weights
from facesortd.config import Config, DetectorConfig, EmbedderConfig, InboxConfig, WatchConfig

TARGET_IMAGES_PER_S = 10


def camera_photos(folder: Path, source: Path, count: int, size: tuple[int, int] = (4000, 3000),
                  quality: int = 90) -> list[Path]:
    """``count`` 12-megapixel camera-like JPEGs: real photos from ``source`` upscaled (bicubic)
    to ``size`` and saved at ``quality``; one pixel differs per copy so none is a duplicate."""
    return replicated(folder, source, count, size=size, prefix="camera", quality=quality)


def detector_vs_stock(files: list[Path], detector, max_side: int, repeats: int = 3) -> dict:
    """Our detector on the decoded photos (in its batches) against facenet-pytorch's
    ``MTCNN.detect`` one photo at a time (it cannot batch photos with different face counts),
    same pyramid start and thresholds; medians of ``repeats`` alternating runs."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    from facesortd.ingest.imageio import decode

    decoded = [decode(p, max_side=max_side) for p in files]
    rgbs, scales = [d.rgb for d in decoded], [d.scale for d in decoded]
    minsize = detector.min_face_size(scales[0])
    stock = MTCNN(keep_all=True, min_face_size=minsize, thresholds=list(detector.thresholds),
                  factor=detector.factor, device=detector.device)
    pictures = [Image.fromarray(rgb) for rgb in rgbs]
    ours_s, stock_s, ours_faces, stock_faces = [], [], 0, 0
    detector.detect(rgbs[:1], scales[:1])  # load and warm up both
    stock.detect(pictures[0])
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = detector.detect(rgbs, scales)
        ours_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        boxes = [stock.detect(p)[1] for p in pictures]
        stock_s.append(time.perf_counter() - t0)
        ours_faces = sum(map(len, found))
        stock_faces = sum(0 if p is None else int((p >= detector.config.min_probability).sum())
                          for p in boxes)
    n = len(files)
    ours_ms, stock_ms = 1000 * statistics.median(ours_s) / n, 1000 * statistics.median(stock_s) / n
    return {"input": f"{rgbs[0].shape[1]}x{rgbs[0].shape[0]}", "pyramid_min_face_px": minsize,
            "ours_ms_per_image": round(ours_ms, 1), "stock_mtcnn_ms_per_image": round(stock_ms, 1),
            "speedup_vs_stock": round(stock_ms / ours_ms, 2),
            "faces_ours": ours_faces, "faces_stock_p_over_min_probability": stock_faces}


def bench_detect(images: Path, count: int = 24, batch_size: int = 64, device: str = "auto",
                 precision: str = "auto", repeats: int = 3, max_side_px: Optional[int] = None,
                 size: tuple[int, int] = (4000, 3000), stock: bool = True) -> dict:
    """Detect mode on 12-megapixel camera JPEGs made from the photos in ``images``: the real
    pipeline's images/s and where the time goes (decode in the workers, MTCNN and embedding on
    the model thread, the store), median over ``repeats`` runs with fresh stores; then the
    detector alone against facenet-pytorch's MTCNN (``stock=False`` skips that)."""
    from facesortd.app.daemon import make_detector
    from facesortd.models.embedders import create_embedder, resolve_device

    tmp = Path(tempfile.mkdtemp(prefix="facesortd-bench-"))
    try:
        inbox = tmp / "inbox"
        inbox.mkdir()
        files = camera_photos(inbox, images, count, size)
        emb_cfg = EmbedderConfig(name="facenet", weights=untrained_weights(tmp), device=device,
                                 batch_size=batch_size, precision=precision)
        det_cfg = DetectorConfig() if max_side_px is None else DetectorConfig(max_side_px=max_side_px)
        model = create_embedder(emb_cfg)
        model.load()
        detector = None
        runs = []
        for r in range(repeats):
            cfg = Config(state_dir=tmp / f"state{r}", library=tmp / f"library{r}",
                         inboxes=(InboxConfig(path=inbox, mode="detect"),), detector=det_cfg,
                         watch=WatchConfig(settle_ms=0, rescan_interval_s=0), embedder=emb_cfg)
            if detector is None:
                detector = make_detector(cfg, resolve_device(device))
            run = run_pipeline(cfg, model, detector, jobs_for(files, inbox, "detect"))
            run.pop("counts")
            n = len(files)
            run.update(decode_ms_per_image=1000 * run["prepare_seconds_all_workers"] / n,
                       detect_ms_per_image=1000 * run["detect_seconds"] / n,
                       embed_ms_per_image=1000 * run["embed_seconds"] / n,
                       store_ms_per_image=1000 * run["store_seconds"] / n)
            runs.append(run)
        median = lambda key: round(statistics.median(r[key] for r in runs), 1)  # noqa: E731
        out = {
            "bench": "detect", "files": len(files), "source": f"{images} upscaled to "
            f"{size[0]}x{size[1]}, JPEG quality 90", "repeats": repeats,
            "detector": detector.describe() | {"max_side_px": det_cfg.max_side_px,
                                               "crop_side_px": det_cfg.crop_side()},
            "model": model.describe(),
            "pipeline_images_per_s": median("images_per_s"),
            "faces_per_run": runs[-1]["faces"],
            "breakdown_ms_per_image": {
                "decode (worker threads, summed)": median("decode_ms_per_image"),
                "detect (model thread)": median("detect_ms_per_image"),
                "embed (model thread)": median("embed_ms_per_image"),
                "store (model thread)": median("store_ms_per_image")},
            "target_images_per_s": TARGET_IMAGES_PER_S,
        }
        if stock:
            out["detector_vs_facenet_pytorch"] = detector_vs_stock(
                files, detector, det_cfg.max_side_px, repeats)
        out.update(runs=[rounded(r) for r in runs], machine=machine())
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
