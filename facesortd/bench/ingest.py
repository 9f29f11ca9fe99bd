"""``facesortd bench ingest`` / ``bench detect``: the real pipeline's images/s beside the bare
model's and beside the old tool's way (fp32, batch 64, contiguous NCHW, decode everything first,
then embed), all measured in the same run, printed as JSON.

Speed does not depend on the weights' values, so the facenet benchmark uses an untrained
InceptionResnetV1 saved to a temporary state dict (the VGGFace2 weights cannot be downloaded here).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from facesortd.bench.common import (
    jobs_for,
    machine,
    replicated,
    rounded,
    run_pipeline,
    synthetic_faces,
    untrained_weights,
)
from facesortd.config import Config, EmbedderConfig, InboxConfig, WatchConfig


def old_tool_images_per_s(files: list[Path], weights: Path, batch_size: int = 64) -> float:
    """The tool this grew from, end to end: fp32, contiguous NCHW, batch 64, no overlap (decode
    and resize every file first, then embed them batch by batch). Same weights, same thread pool."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    t0 = time.perf_counter()
    arrays = []
    for path in files:
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((160, 160), Image.Resampling.BILINEAR)))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()
    x = (x - 127.5) / 128.0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size]).numpy()
    return len(files) / (time.perf_counter() - t0)


def bench_ingest(mode: str = "aligned", embedder: str = "facenet", images: Optional[Path] = None,
                 count: int = 1000, batch_size: int = 64, device: str = "auto",
                 precision: str = "auto", repeats: int = 3, old_tool: bool = True,
                 bare_seconds: float = 2.0, workers: Optional[int] = None,
                 decode_processes: Optional[int] = None, ceiling: bool = False,
                 cuda_graphs: bool = True, fold: bool = True, dlib_runtime: str = "torch",
                 run_once: bool = False) -> dict:
    """Ingest ``count`` files through the real pipeline ``repeats`` times (fresh store each time),
    each run between two measurements of the bare model at the same settings in the same process,
    and (facenet, aligned) followed by the old tool's way on the same files.

    ``ratio`` is the median over runs of pipeline images/s ÷ the bare model's images/s measured
    just before and just after that run (the bare figure is the median batch time, its best
    steady state); ``ratio_vs_bare_mean`` divides by the bare model's mean throughput instead
    (total images ÷ total time, measured like the pipeline's). ``vs_old_tool`` is the median of
    pipeline images/s ÷ the old tool's images/s of the same run. ``model_busy_fraction`` is the
    share of the pipeline's wall time the model spent embedding (1.0 = the model never waited).

    ``ceiling``: the benchmark-only ``CeilingEmbedder`` (a forward pass that costs ~nothing)
    replaces the model, so images/s is the pipeline's own limit; no bare model, no old tool.
    ``us_per_image.cpu_this_process`` is the CPU time of this process (every thread, not the
    decoding processes) per image: with decoding processes, most of it needs the GIL, so
    1e6 / it bounds what the pipeline can feed a model however many cores the machine has.
    ``decode_processes``: 0 decodes in threads, N in N worker processes, None as the device wants.
    ``cuda_graphs``: embedder.cuda_graphs (facenet on CUDA replays one captured graph per batch).
    ``fold``: embedder.fold (facenet on CPU runs the folded copy of the model).
    ``dlib_runtime``: embedder.dlib_runtime for the pipeline runs. With ``embedder="dlib"`` the
    result also holds ``runtimes.chips`` (``runtimes.chip_throughput``: both runtimes' faces/s on
    the same chips) and, with ``run_once`` and ``images``, ``runtimes.run_once`` (``facesortd run
    --once`` on fresh copies of ``images`` in ``mode`` with each runtime).
    """
    from facesortd.models.embedders import create_embedder

    tmp = Path(tempfile.mkdtemp(prefix="facesortd-bench-"))
    try:
        inbox = tmp / "inbox"
        inbox.mkdir()
        files = (replicated(inbox, images, count) if images else synthetic_faces(inbox, count))
        weights = untrained_weights(tmp) if embedder == "facenet" and not ceiling else None
        emb_cfg = EmbedderConfig(name=embedder, weights=weights, device=device,
                                 batch_size=batch_size, precision=precision,
                                 cuda_graphs=cuda_graphs, fold=fold, dlib_runtime=dlib_runtime)
        if ceiling:
            from facesortd.bench.ceiling import CeilingEmbedder
            model = CeilingEmbedder()
        else:
            model = create_embedder(emb_cfg)
        model.load()
        detector = None
        if mode == "detect":
            from facesortd.app.daemon import make_detector
            from facesortd.models.embedders import resolve_device
        bare = None
        if (embedder == "facenet" or dlib_runtime == "torch") and not ceiling:
            from facesortd.bench.model import bare_model_throughput as bare
        old = old_tool and embedder == "facenet" and mode == "aligned" and not ceiling \
            and str(model.describe().get("device", "cpu")).startswith("cpu")
        runs = []
        for r in range(repeats):
            cfg = Config(state_dir=tmp / f"state{r}", library=tmp / f"library{r}",
                         inboxes=(InboxConfig(path=inbox, mode=mode),),
                         watch=WatchConfig(settle_ms=0, rescan_interval_s=0), embedder=emb_cfg)
            if mode == "detect" and detector is None:
                detector = make_detector(cfg, resolve_device(device))
            # The bare model right before and right after each pipeline run: on a shared, noisy
            # machine a ratio is only meaningful between measurements taken close together.
            before = bare(model, batch_size, seconds=bare_seconds) if bare else None
            run = run_pipeline(cfg, model, detector, jobs_for(files, inbox, mode), workers,
                                decode_processes)
            counts = run.pop("counts")
            if bare:
                after = bare(model, batch_size, seconds=bare_seconds)
                median_ips = (before["median"] + after["median"]) / 2
                mean_ips = (before["mean"] + after["mean"]) / 2
                run.update(model_images_per_s=median_ips, ratio=run["images_per_s"] / median_ips,
                           model_mean_images_per_s=mean_ips,
                           ratio_vs_bare_mean=run["images_per_s"] / mean_ips)
            if old:
                old_ips = old_tool_images_per_s(files, weights)
                run.update(old_tool_images_per_s=old_ips, vs_old_tool=run["images_per_s"] / old_ips)
            runs.append(run)
        median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        out = {
            "bench": "ingest", "mode": mode, "embedder": model.name, "files": len(files),
            "source": str(images) if images else "synthetic 250x250 JPEG",
            "batch_size": batch_size, "repeats": repeats, "model": model.describe(),
            "pipeline_images_per_s": round(median("images_per_s"), 1),
            "model_images_per_s": round(median("model_images_per_s"), 1) if bare else None,
            "ratio": round(median("ratio"), 3) if bare else None,
            "ratio_vs_bare_mean": round(median("ratio_vs_bare_mean"), 3) if bare else None,
            "model_busy_fraction": round(median("model_busy_fraction"), 3),
            "workers": runs[-1]["workers"],
            "us_per_image": {k: round(statistics.median(r["us_per_image"][k] for r in runs), 1)
                             for k in runs[0]["us_per_image"]},
        }
        if old:
            out.update(old_tool={"what": "fp32, batch 64, contiguous NCHW, decode all then embed",
                                 "images_per_s": round(median("old_tool_images_per_s"), 1)},
                       vs_old_tool=round(median("vs_old_tool"), 2))
        if embedder == "dlib" and not ceiling:
            from facesortd.bench.runtimes import chip_throughput, run_once_throughput
            out["runtimes"] = {"chips": chip_throughput(images, min(count, 64), batch_size,
                                                        device, precision)}
            if run_once and images is not None:
                out["runtimes"]["run_once"] = run_once_throughput(images, mode, device, batch_size)
        out.update(runs=[rounded(r) for r in runs], store_counts=counts, machine=machine())
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
