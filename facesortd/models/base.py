"""The small interface every embedding backend implements.

A backend loads its model lazily (``load()``), turns one face of a decoded image into the input its
model needs (``prepare()``, pure CPU work that may run in worker threads ahead of the model), and
embeds a micro-batch of prepared faces (``embed()``, called from the one model thread).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from facesortd.store.database import Box  # noqa: F401 (x1, y1, x2, y2; models hand boxes to the store)

#: ``clustering.eps: auto`` per embedder name: the tuned distance between two faces of one person
#: (each embedder's ``default_eps`` says how it was chosen). A table, so that code that only
#: needs the number (the review page, ``facesortd recluster``) loads no model.
TUNED_EPS = {"facenet": 0.9, "dlib": 0.43}


class Embedder(Protocol):
    name: str          # "facenet" | "dlib"
    dim: int           # length of one vector
    default_eps: float  # the tuned clustering distance for this model (clustering.eps: auto)

    @property
    def model_id(self) -> str:
        """Identifies the model and its weights; vectors of two model ids are never mixed."""

    def load(self) -> None:
        """Load weights (idempotent). Raises ModelUnavailable with instructions when it cannot."""

    def prepare(self, image: np.ndarray, box: Box) -> Any:
        """Cut and align one face from an RGB uint8 HxWx3 image; thread-safe, no model needed."""

    def embed(self, faces: Sequence[Any]) -> np.ndarray:
        """Embed prepared faces: float32 [len(faces), dim], each row L2-normalised."""

    def describe(self) -> dict:
        """Settings in force (device, precision, layout), for status, doctor and benchmarks."""
