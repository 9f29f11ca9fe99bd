"""Embedding backends behind one small interface (see ``base.Embedder``).

``create_embedder`` only builds the object; weights load on ``load()`` (or the first ``embed()``),
so importing this package and checking a config stay cheap and need no torch.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from facesortd.config import EmbedderConfig
from facesortd.errors import ModelUnavailable
from facesortd.models.base import TUNED_EPS, Box, Embedder

if TYPE_CHECKING:
    import torch

__all__ = ["Box", "Embedder", "EmbedderChoice", "choose_embedder", "create_embedder",
           "dlib_installed", "eps_model", "load_embedder", "model_name", "resolve_device", "tuned_eps"]

log = logging.getLogger(__name__)


def tuned_eps(name: str) -> float:
    """``clustering.eps: auto`` for an embedder name (``dlib``) or a store's model id
    (``dlib-resnet-v1``), without building or loading the model."""
    for embedder, eps in TUNED_EPS.items():
        if name == embedder or name.startswith(embedder + "-"):
            return eps
    raise ModelUnavailable(f"embedder.name: unknown embedder {name!r}; use facenet or dlib")


def eps_model(cfg: EmbedderConfig, store_model: Optional[str]) -> str:
    """The model whose tuned eps ``clustering.eps: auto`` means: the store's, else the one
    ``embedder.name`` would choose (``auto``: without downloading anything)."""
    return store_model or choose_embedder(cfg).name


def model_name(model_id: str) -> str:
    """The embedder name (``facenet``, ``dlib``) that made a store's model id."""
    for embedder in TUNED_EPS:
        if model_id == embedder or model_id.startswith(embedder + "-"):
            return embedder
    raise ModelUnavailable(f"the store's model {model_id!r} is not one this version knows "
                           "(facenet-..., dlib-...)")


@dataclass(frozen=True)
class EmbedderChoice:
    """Which model runs, and why in words (``facesortd status`` and ``doctor`` print both).

    ``may_fall_back``: ``auto`` picked facenet without its weights on this machine; if the download
    fails at load, dlib runs instead (``load_embedder``). ``fell_back``: it did, and why facenet
    was not available (the text ``embedder.name: facenet`` would have stopped with)."""

    name: str
    reason: str
    may_fall_back: bool = False
    fell_back: Optional[str] = None


def dlib_installed() -> bool:
    """dlib and face_recognition_models are importable (nothing is imported or loaded)."""
    return all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


def _facenet_weights_on_disk() -> Optional[Path]:
    from facesortd.models.facenet import facenet_cache_file, hub_cache_file
    return next((p for p in (facenet_cache_file(), hub_cache_file()) if p.is_file()), None)


def choose_embedder(cfg: EmbedderConfig, store_model: Optional[str] = None) -> EmbedderChoice:
    """``embedder.name`` resolved, without loading a model or downloading anything.

    ``auto``: the store's model when the store has one (a store keeps its model; ``facesortd
    migrate`` changes it); else facenet when ``embedder.weights`` is set (a path that is wrong is
    an error, never a silent switch) or the VGGFace2 weights are in the torch caches; else facenet
    if they can be downloaded, falling back to dlib when it is installed; else facenet, whose
    load then says what to install or download."""
    if cfg.name != "auto":
        return EmbedderChoice(cfg.name, f"embedder.name: {cfg.name} in the config")
    if store_model:
        name = model_name(store_model)
        return EmbedderChoice(name, f"auto: the store holds vectors of {store_model}, and a store "
                                    f"keeps its model (facesortd migrate changes it)")
    if cfg.weights is not None:
        return EmbedderChoice("facenet", f"auto: embedder.weights is set ({cfg.weights})")
    try:
        found = _facenet_weights_on_disk()
    except ImportError as exc:   # facenet-pytorch missing: a broken install; dlib may still run
        found, missing = None, f"facenet-pytorch cannot be imported ({exc})"
    else:
        missing = None
    if found is not None:
        return EmbedderChoice("facenet", f"auto: the VGGFace2 weights are at {found}")
    if dlib_installed():
        if missing:
            return EmbedderChoice("dlib", f"auto: {missing}; dlib is installed", fell_back=missing)
        return EmbedderChoice("facenet", "auto: no VGGFace2 weights on this machine yet: facenet "
                                         "if they can be downloaded, else dlib (installed)",
                              may_fall_back=True)
    return EmbedderChoice("facenet", "auto: no VGGFace2 weights on this machine and dlib is not "
                                     "installed: facenet, if its weights can be downloaded")


def load_embedder(cfg: EmbedderConfig, store_model: Optional[str] = None
                  ) -> tuple[Embedder, EmbedderChoice]:
    """The embedder ``embedder.name`` means (see ``choose_embedder``), loaded. When ``auto``
    found no facenet weights and their download fails, dlib runs instead with one warning that
    says why and how to get facenet; any other failure raises ``ModelUnavailable``."""
    choice = choose_embedder(cfg, store_model)
    concrete = cfg.model_copy(update={"name": choice.name})
    embedder = create_embedder(concrete)
    if choice.fell_back:
        log.warning("embedder.name auto: using dlib, facenet is not available: %s", choice.fell_back)
    try:
        embedder.load()
    except ModelUnavailable as exc:
        if not choice.may_fall_back:
            raise
        why = " ".join(line.strip().lstrip("- ") for line in str(exc).splitlines()
                       if "Or use the dlib model" not in line)   # it is in use
        log.warning("embedder.name auto: using dlib (offline), facenet is not available: %s", why)
        choice = EmbedderChoice("dlib", "auto: the VGGFace2 weights are not on this machine and "
                                        "could not be downloaded; dlib is installed", fell_back=why)
        embedder = create_embedder(cfg.model_copy(update={"name": "dlib"}))
        embedder.load()
    return embedder, choice


def create_embedder(cfg: EmbedderConfig) -> Embedder:
    """The backend ``cfg.name`` names, not yet loaded (``auto``: see ``load_embedder``)."""
    if cfg.name == "auto":
        cfg = cfg.model_copy(update={"name": choose_embedder(cfg).name})
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
