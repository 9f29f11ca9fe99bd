"""What the benchmarks share: test pictures made or replicated on the fly, untrained facenet
weights (speed does not depend on their values), the real pipeline run over a list of files, and
the machine's description and rounding for the JSON they print."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from facesortd.config import Config
from facesortd.errors import FacesortdError
from facesortd.inbox.jobs import Job

__all__ = ["synthetic_faces", "replicated", "untrained_weights", "jobs_for", "run_pipeline",
           "machine", "rounded"]


def synthetic_faces(folder: Path, count: int, side: int = 250, seed: int = 0) -> list[Path]:
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


def replicated(folder: Path, source: Path, count: int, size: Optional[tuple[int, int]] = None,
                prefix: str = "img", quality: int = 92) -> list[Path]:
    """``count`` distinct JPEGs made from the images in ``source``, resized (bicubic) to ``size``
    when given; one pixel differs per copy so content dedupe does not skip them."""
    originals = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not originals:
        raise FacesortdError(f"no .jpg/.jpeg/.png images in {source}")
    paths = []
    for i in range(count):
        with Image.open(originals[i % len(originals)]) as im:
            im = im.convert("RGB")
            if size is not None:
                im = im.resize(size, Image.Resampling.BICUBIC)
        im.putpixel((0, 0), (i % 256, (i // 256) % 256, 7))
        path = folder / f"{prefix}_{i:06d}.jpg"
        im.save(path, quality=quality)
        paths.append(path)
    return paths


def untrained_weights(folder: Path) -> Path:
    import torch
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    path = folder / "untrained-inception-resnet-v1.pt"
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), path)
    return path


def jobs_for(files: list[Path], inbox: Path, mode: str) -> list[Job]:
    jobs = []
    for p in files:
        st = p.stat()
        jobs.append(Job(p, inbox, mode, st.st_size, st.st_mtime_ns))
    return jobs


def run_pipeline(cfg: Config, model, detector, jobs: list[Job],
                  workers: Optional[int] = None, decode_processes: Optional[int] = None) -> dict:
    """Ingest ``jobs`` through a fresh store and the real Pipeline; wall time and stage times."""
    from facesortd.ingest.pipeline import Pipeline
    from facesortd.store.database import Store

    store = Store.open(cfg.state_dir)
    store.bind_model(model.model_id, model.dim)
    pipeline = Pipeline(cfg, store, model, detector, workers=workers, queue_size=len(jobs) + 1,
                        decode_processes=decode_processes)
    pipeline.start()
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        for job in jobs:
            pipeline.submit(job)
        pipeline.drain()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        pipeline.stop()
        counts = store.counts()
        store.close()
    st = pipeline.stats
    per_image = 1e6 / len(jobs)
    return {"seconds": wall, "images_per_s": len(jobs) / wall, "faces": st.faces,
            "workers": pipeline.workers_description(),
            "us_per_image": {"cpu_this_process": cpu * per_image,
                             "embed": st.model_seconds * per_image,
                             "store": st.store_seconds * per_image,
                             "prepare_all_workers": st.prepare_seconds * per_image},
            "batches": st.batches, "model_busy_fraction": st.model_seconds / wall,
            "embed_seconds": st.model_seconds, "detect_seconds": st.detect_seconds,
            "store_seconds": st.store_seconds, "prepare_seconds_all_workers": st.prepare_seconds,
            "counts": counts}


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def rounded(run: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else rounded(v) if isinstance(v, dict) else v
            for k, v in run.items() if k != "counts"}

