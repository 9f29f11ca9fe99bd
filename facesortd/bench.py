"""``facesortd bench ingest``: the real pipeline's images/s beside the bare model's, same run.

Speed does not depend on the weights' values, so the facenet benchmark uses an untrained
InceptionResnetV1 saved to a temporary state dict (the VGGFace2 weights cannot be downloaded here).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .config import Config, EmbedderConfig, InboxConfig, WatchConfig
from .jobs import Job


def _synthetic_faces(folder: Path, count: int, side: int = 250, seed: int = 0) -> list[Path]:
    """Face-sized JPEGs with smooth content (noise would decode unrealistically slowly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    paths = []
    for i in range(count):
        a, b, c = rng.uniform(0.5, 3.0, 3)
        img = np.stack([np.sin(a * 6 * xx + i) * 0.5 + 0.5,
                        np.cos(b * 6 * yy - i) * 0.5 + 0.5,
                        np.sin(c * 6 * (xx + yy)) * 0.5 + 0.5], axis=-1)
        path = folder / f"synthetic_{i:06d}.jpg"
        Image.fromarray((img * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _replicated(folder: Path, source: Path, count: int) -> list[Path]:
    """``count`` distinct files made from the images in ``source`` (one pixel changed per copy,
    so content dedupe does not skip them)."""
    originals = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not originals:
        raise SystemExit(f"no images in {source}")
    paths = []
    for i in range(count):
        with Image.open(originals[i % len(originals)]) as im:
            im = im.convert("RGB")
            im.putpixel((0, 0), (i % 256, (i // 256) % 256, 7))
            path = folder / f"img_{i:06d}.jpg"
            im.save(path, quality=92)
        paths.append(path)
    return paths


def _untrained_weights(folder: Path) -> Path:
    import torch
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    path = folder / "untrained-inception-resnet-v1.pt"
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), path)
    return path


def bench_ingest(mode: str = "aligned", embedder: str = "facenet", images: Optional[Path] = None,
                 count: int = 1000, batch_size: int = 64, device: str = "auto",
                 precision: str = "auto", repeats: int = 3) -> dict:
    """Ingest ``count`` files through the real pipeline ``repeats`` times (fresh store each time),
    each run between two measurements of the bare model at the same settings in the same process.

    ``ratio`` is the median over runs of pipeline images/s ÷ the bare model's images/s measured
    just before and just after that run; ``model_busy_fraction`` is the share of the pipeline's wall time the model spent
    embedding (1.0 = the model never waited).
    """
    from .embedders import create_embedder
    from .pipeline import Pipeline
    from .store import Store

    tmp = Path(tempfile.mkdtemp(prefix="facesortd-bench-"))
    try:
        inbox = tmp / "inbox"
        inbox.mkdir()
        files = (_replicated(inbox, images, count) if images else _synthetic_faces(inbox, count))
        weights = _untrained_weights(tmp) if embedder == "facenet" else None
        emb_cfg = EmbedderConfig(name=embedder, weights=weights, device=device,
                                 batch_size=batch_size, precision=precision)
        model = create_embedder(emb_cfg)
        model.load()
        detector = None
        if mode == "detect":
            from .daemon import make_detector
            from .embedders import resolve_device
        bare = None
        if embedder == "facenet":
            from .embedders.facenet import bare_model_images_per_s as bare
        runs = []
        for r in range(repeats):
            cfg = Config(state_dir=tmp / f"state{r}", library=tmp / f"library{r}",
                         inboxes=(InboxConfig(path=inbox, mode=mode),),
                         watch=WatchConfig(settle_ms=0, rescan_interval_s=0), embedder=emb_cfg)
            if mode == "detect" and detector is None:
                detector = make_detector(cfg, resolve_device(device))
            # The bare model right before and right after each pipeline run: on a shared, noisy
            # machine a ratio is only meaningful between measurements taken close together.
            before = bare(model, batch_size, seconds=2.0) if bare else None
            store = Store.open(cfg.state_dir)
            store.bind_model(model.model_id, model.dim)
            pipeline = Pipeline(cfg, store, model, detector, queue_size=count + 1)
            pipeline.start()
            try:
                jobs = []
                for p in files:
                    st = p.stat()
                    jobs.append(Job(p, inbox, mode, st.st_size, st.st_mtime_ns))
                t0 = time.perf_counter()
                for job in jobs:
                    pipeline.submit(job)
                pipeline.drain()
                wall = time.perf_counter() - t0
            finally:
                pipeline.stop()
                counts = store.counts()
                store.close()
            ips = len(files) / wall
            model_ips = (before + bare(model, batch_size, seconds=2.0)) / 2 if bare else None
            runs.append({"seconds": wall, "images_per_s": ips, "model_images_per_s": model_ips,
                         "ratio": ips / model_ips if model_ips else None,
                         "model_busy_fraction": pipeline.stats.model_seconds / wall,
                         "faces": pipeline.stats.faces, "batches": pipeline.stats.batches})
        median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        return {
            "bench": "ingest", "mode": mode, "embedder": embedder, "files": len(files),
            "source": str(images) if images else "synthetic 250x250 JPEG",
            "batch_size": batch_size, "repeats": repeats, "model": model.describe(),
            "pipeline_images_per_s": round(median("images_per_s"), 1),
            "model_images_per_s": round(median("model_images_per_s"), 1) if bare else None,
            "ratio": round(median("ratio"), 3) if bare else None,
            "model_busy_fraction": round(median("model_busy_fraction"), 3),
            "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                     for r in runs],
            "store_counts": counts,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "glibc_tunables": os.environ.get("GLIBC_TUNABLES")},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
