"""Embedding backends behind one small interface (see ``base.Embedder``).

``create_embedder`` only builds the object; weights load on ``load()`` (or the first ``embed()``),
so importing this package and checking a config stay cheap and need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from facesortd.config import EmbedderConfig
from facesortd.errors import ModelUnavailable
from facesortd.models.base import TUNED_EPS, Box, Embedder

if TYPE_CHECKING:
    import torch

__all__ = ["Box", "Embedder", "create_embedder", "resolve_device", "tuned_eps"]


def tuned_eps(name: str) -> float:
    """``clustering.eps: auto`` for an embedder name (``dlib``) or a store's model id
    (``dlib-resnet-v1``), without building or loading the model."""
    for embedder, eps in TUNED_EPS.items():
        if name == embedder or name.startswith(embedder + "-"):
            return eps
    raise ModelUnavailable(f"embedder.name: unknown embedder {name!r}; use facenet or dlib")


def create_embedder(cfg: EmbedderConfig) -> Embedder:
    """The backend ``cfg.name`` names, not yet loaded."""
    if cfg.name == "facenet":
        from facesortd.models.facenet import FacenetEmbedder
        return FacenetEmbedder(cfg)
    if cfg.name == "dlib":
        from facesortd.models.dlib import DlibEmbedder
        return DlibEmbedder(cfg)
    raise ModelUnavailable(f"embedder.name: unknown embedder {cfg.name!r}; use facenet or dlib")


def resolve_device(spec: str) -> "torch.device":
    """``auto`` -> cuda when one is usable, else cpu; a CUDA device that is not there is an error."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = 0 if device.index is None else device.index
    if index >= count:
        have = (f"this machine has {count} CUDA device(s): "
                + ", ".join(f"cuda:{i}" for i in range(count))) if count else \
            "torch sees no CUDA device here (no GPU, no driver, or a CPU-only torch build)"
        raise ModelUnavailable(
            f"embedder.device: {spec} does not exist; {have}. "
            "Set embedder.device to auto (GPU when there is one, else CPU), cpu"
            + (", or one of the devices above." if count else "."))
    return torch.device("cuda", index)
