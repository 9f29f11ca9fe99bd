"""The bare model's speed: the upper bound ``bench ingest`` compares the pipeline with. Uses only
the embedder's public hooks (``standard_batch``, ``forward``); torch is imported by the model."""

from __future__ import annotations

import statistics
import time

__all__ = ["bare_model_images_per_s", "bare_model_throughput"]


def bare_model_images_per_s(embedder, batch_size: int,
                            seconds: float = 3.0) -> float:
    """Images/s of the bare forward pass at the embedder's own settings (device, autocast, memory
    format): a standardized float batch already on the device, median of timed runs after
    warm-up. The upper bound the pipeline is compared against."""
    return bare_model_throughput(embedder, batch_size, seconds)["median"]


def bare_model_throughput(embedder, batch_size: int,
                          seconds: float = 3.0) -> dict[str, float]:
    """The bare forward pass's images/s two ways: ``median`` (batch size ÷ median batch time,
    its steady state on a quiet machine) and ``mean`` (images ÷ total time, measured the way a
    pipeline run is, slow moments included)."""
    x = embedder.standard_batch(batch_size)
    for _ in range(2):                          # warm-up: oneDNN/cudnn pick their kernels
        embedder.forward(x)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter()
        embedder.forward(x)
        times.append(time.perf_counter() - t0)
    return {"median": batch_size / statistics.median(times),
            "mean": batch_size * len(times) / sum(times)}
