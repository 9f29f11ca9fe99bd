"""A face the detector missed, drawn on the photo view: cut from the photo as the pipeline cuts a
detected one, embedded with the store's model, then stored and pinned (``corrections.add_face``).

The page's process embeds it with a model of its own, loaded at the first drawn face and kept (the
daemon's model thread is never shared: a CUDA graph or a batch in flight there is not re-entrant);
one drawn face at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from facesortd.config import Config
from facesortd.errors import FacesortdError
from facesortd.ingest.worker import decode_request
from facesortd.models.embedders import create_embedder, model_name

__all__ = ["embed_box", "MIN_SIDE_PX"]

#: The smallest box accepted, in the photo's pixels (the detector's own floor is min_face_px).
MIN_SIDE_PX = 16

_LOCK = threading.Lock()


def _embedder(models: dict, config: Config, model_id: str) -> Any:
    """The store's model, loaded once per app (``models`` is the app's own dict)."""
    if model_id not in models:
        cfg = config.embedder.model_copy(update={"name": model_name(model_id), "cuda_graphs": False})
        embedder = create_embedder(cfg)
        embedder.load()
        if embedder.model_id != model_id:
            raise FacesortdError(f"the configured {cfg.name} model is {embedder.model_id}, but the "
                                 f"store holds vectors of {model_id}")
        models[model_id] = embedder
    return models[model_id]


def embed_box(models: dict, config: Config, model_id: str, photo: Path,
              box: tuple[float, float, float, float]) -> np.ndarray:
    """The vector of the face in ``box`` (upright full-size pixels) of ``photo``."""
    with _LOCK:
        embedder = _embedder(models, config, model_id)
        rgb, scale, _ = decode_request(photo, "full", config.detector.crop_side())
        chip = embedder.prepare(rgb, tuple(v / scale for v in box))
        return np.asarray(embedder.embed([chip])[0], np.float32)
