"""dlib's ResNet in its two runtimes (``embedder.dlib_runtime``), measured in one run:
``bench ingest --embedder dlib`` adds ``chips`` (faces/s of each runtime's ``embed`` on the same
chips, and how close their vectors are), and with ``--run-once`` the end-to-end figure:
``facesortd run --once`` on fresh copies of the same folder with each runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from facesortd.config import EmbedderConfig
from facesortd.errors import FacesortdError

__all__ = ["chip_throughput", "run_once_throughput"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def chip_throughput(images: Optional[Path], count: int, batch_size: int, device: str,
                    precision: str, seconds: float = 5.0) -> dict:
    """Faces/s of the torch runtime's and of dlib's ``compute_face_descriptor`` on the same
    ``count`` chips (each image's whole frame as the box, as aligned mode cuts them), in this
    process, one after the other; their ratio; the lowest cosine between their vectors."""
    from PIL import Image

    from facesortd.models.dlib import DlibEmbedder

    cfg = EmbedderConfig(name="dlib", device=device, batch_size=batch_size, precision=precision)
    torch_rt = DlibEmbedder(cfg)
    dlib_rt = DlibEmbedder(cfg.model_copy(update={"dlib_runtime": "dlib"}))
    torch_rt.load()
    dlib_rt.load()
    if images is not None:
        files = _images(images)
        if not files:
            raise FacesortdError(f"no .jpg/.jpeg/.png images in {images}")
        frames = [np.asarray(Image.open(files[i % len(files)]).convert("RGB")) for i in range(count)]
    else:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (250, 250, 3), dtype=np.uint8) for _ in range(count)]
    chips = [torch_rt.prepare(f, (0.0, 0.0, float(f.shape[1]), float(f.shape[0]))) for f in frames]

    torch_rt.embed(chips[:batch_size])                     # warm-up: oneDNN/cudnn pick kernels
    t0, done = time.perf_counter(), 0
    while done == 0 or time.perf_counter() - t0 < seconds:
        got = torch_rt.embed(chips)
        done += len(chips)
    torch_fps = done / (time.perf_counter() - t0)

    dlib_rt.embed(chips[:1])
    t0 = time.perf_counter()
    want = dlib_rt.embed(chips)
    dlib_fps = len(chips) / (time.perf_counter() - t0)
    return {"chips": len(chips), "source": str(images) if images else "random pixels",
            "torch_faces_per_s": round(torch_fps, 1), "dlib_faces_per_s": round(dlib_fps, 2),
            "ratio": round(torch_fps / dlib_fps, 2),
            "min_cosine": round(float(np.sum(got * want, axis=1).min()), 7),
            "torch": torch_rt.describe(), "dlib": dlib_rt.describe()}


def run_once_throughput(folder: Path, mode: str, device: str, batch_size: int,
                        runtimes: tuple[str, ...] = ("dlib", "torch")) -> dict:
    """``facesortd run --once`` (a fresh process, as a user runs it) on a fresh copy of
    ``folder`` for each runtime. photos/s is the photos over the process's wall time less the
    same command's time on an empty inbox (start-up, imports, model loading), measured alongside;
    ``photos_per_s_with_startup`` keeps it in."""
    photos = _images(folder)
    if not photos:
        raise FacesortdError(f"no .jpg/.jpeg/.png images in {folder}")
    tmp = Path(tempfile.mkdtemp(prefix="facesortd-bench-runonce-"))
    out: dict = {"folder": str(folder), "photos": len(photos), "mode": mode}
    try:
        for runtime in runtimes:
            empty = _run_once(tmp / f"{runtime}-empty", None, mode, runtime, device, batch_size)
            full = _run_once(tmp / runtime, folder, mode, runtime, device, batch_size)
            work = full["seconds"] - empty["seconds"]
            out[runtime] = {"seconds": round(full["seconds"], 2),
                            "startup_seconds": round(empty["seconds"], 2),
                            "photos_per_s": round(len(photos) / work, 2),
                            "photos_per_s_with_startup": round(len(photos) / full["seconds"], 2),
                            "faces": full["counts"].get("faces"),
                            "identities": full["counts"].get("identities")}
        if set(runtimes) >= {"dlib", "torch"}:
            out["ratio"] = round(out["torch"]["photos_per_s"] / out["dlib"]["photos_per_s"], 2)
            out["ratio_with_startup"] = round(out["torch"]["photos_per_s_with_startup"]
                                              / out["dlib"]["photos_per_s_with_startup"], 2)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_once(root: Path, folder: Optional[Path], mode: str, runtime: str, device: str,
              batch_size: int) -> dict:
    inbox = root / "inbox"
    if folder is None:
        inbox.mkdir(parents=True)
    else:
        shutil.copytree(folder, inbox)
    config = {"state_dir": str(root / "state"), "library": str(root / "library"),
              "inboxes": [{"path": str(inbox), "mode": mode}],
              "watch": {"settle_ms": 0, "rescan_interval_s": 0},
              "embedder": {"name": "dlib", "dlib_runtime": runtime, "device": device,
                           "batch_size": batch_size},
              "web": {"enabled": False}, "log_level": "warning"}
    path = root / "facesortd.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "facesortd", "run", "--once", "--config", str(path)],
                          capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise FacesortdError(f"run --once ({runtime}) failed with {proc.returncode}: "
                             f"{proc.stderr.strip()[-2000:]}")
    return {"seconds": seconds, "counts": json.loads(proc.stdout)}
