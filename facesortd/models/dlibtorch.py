"""dlib's face ResNet run by torch (``embedder.dlib_runtime: torch``): the module ``dlibnet``
builds from face_recognition_models' own file, on the configured device, in micro-batches.

Speed settings are chosen once at load, the same way as facenet's: one torch thread pool no
larger than the usable cores, channels_last, every affine already folded into its convolution
(``dlibnet``); on CUDA, cudnn autotuning, a pinned host buffer and the whole step (uint8 chips
in, unit vectors out) captured as one CUDA graph (``cudagraph.GraphedEmbed``).

Precision: dlib computes in fp32, and the vectors must stay dlib's (cosine >= 0.9999 to
``compute_face_descriptor``). Measured against fp32 on real chips: fp16 weights and activations
keep cosine >= 0.9999995, bf16 autocast only >= 0.99996. So ``auto`` is fp16 on CUDA and fp32 on
the CPU (bf16 runs only when asked for: its margin to the bar is thin).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facesortd.config import EmbedderConfig
from facesortd.models import dlibnet, torchsetup
from facesortd.models.cudagraph import GraphedEmbed, HostBatch

log = logging.getLogger(__name__)

CHIP_SHAPE = (dlibnet.INPUT_SIZE, dlibnet.INPUT_SIZE, 3)
_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def pixels(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC chips on the device -> float NCHW pixel values, the input ``DlibResNet`` takes
    (dlib's own scaling is folded into its first convolution)."""
    x = x.permute(0, 3, 1, 2)          # an NCHW view of NHWC memory: channels_last already
    if not channels_last:
        x = x.contiguous()
    return x.float()


class TorchDlibResNet:
    """``embed(chips)`` -> float32 [n, 128] unit vectors, for uint8 150x150x3 chips from
    ``DlibEmbedder.prepare``."""

    def __init__(self, cfg: EmbedderConfig, weights: Path):
        self.cfg = cfg
        self.weights = weights
        self._lock = threading.Lock()
        self._model: Optional[torch.nn.Module] = None
        self._device = torch.device("cpu")
        self._dtype: Optional[torch.dtype] = None     # fp16/bf16 weights and activations
        self._autocast: Optional[torch.dtype] = None  # CPU bf16 runs under autocast
        self._channels_last = True
        self._pinned = False
        self._host = HostBatch(CHIP_SHAPE)   # the batch buffer (reused and pinned on CUDA)
        self._graphed: Optional[GraphedEmbed] = None
        self._graph_state = "off (not CUDA)"

    def load(self) -> None:
        """Parse the weights, build the module and choose the settings (once)."""
        with self._lock:
            if self._model is not None:
                return
            from facesortd.models.embedders import resolve_device
            device = resolve_device(self.cfg.device)
            model = dlibnet.load(self.weights)
            self._choose_settings(device)
            fmt = torch.channels_last if self._channels_last else torch.contiguous_format
            model = model.to(device=device, memory_format=fmt)
            if self._dtype is not None:
                model = model.to(self._dtype)
            self._model, self._device = model, device
            if device.type == "cuda":
                self._capture_graph()
            log.info("dlib ResNet on torch ready: %s", self.describe())

    def _choose_settings(self, device: torch.device) -> None:
        precision = self.cfg.precision
        if device.type == "cuda":
            self._dtype = {"auto": torch.float16, "fp16": torch.float16,
                           "bf16": torch.bfloat16, "fp32": None}[precision]
            self._pinned = True
            torch.backends.cudnn.benchmark = True   # one input size: autotuning pays at once
            return
        torchsetup.limit_threads()
        torchsetup.warn_if_malloc_untuned()
        if precision == "bf16":
            self._autocast = torch.bfloat16
            if not torchsetup.cpu_has_fast_bf16():
                log.warning("precision: bf16 on a CPU without native bf16 (AVX512-BF16/AMX) is "
                            "emulated and far slower than fp32; consider precision: auto")
        elif precision == "fp16":
            log.warning("precision: fp16 is a CUDA setting; running fp32 on the CPU")
        # oneDNN runs NHWC convolutions faster (measured ~20% at batch 32 on a 2-core AVX2 EPYC)
        self._channels_last = True

    def _capture_graph(self) -> None:
        if not self.cfg.cuda_graphs:
            self._graph_state = "off (embedder.cuda_graphs: false)"
            return
        try:
            self._graphed = GraphedEmbed(self._forward, self._device, self.cfg.batch_size,
                                         dlibnet.INPUT_SIZE, self._channels_last, prep=pixels)
            self._graph_state = f"on (batch {self.cfg.batch_size})"
        except Exception as exc:
            self._graphed = None
            self._graph_state = f"failed, eager: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("CUDA graph capture failed, embedding eagerly: %s: %s",
                        type(exc).__name__, exc)

    def describe(self) -> dict[str, Any]:
        if self._model is None:
            return {"device": self.cfg.device, "precision": self.cfg.precision}
        info: dict[str, Any] = {
            "device": str(self._device),
            "precision": _NAMES[self._dtype or self._autocast],
            "memory_format": "channels_last" if self._channels_last else "contiguous",
            "fold": "on (affine into convolutions, input scaling into the first)",
            "cuda_graphs": self._graph_state,
            "threads": torch.get_num_threads(),
        }
        if self._device.type == "cuda":
            info.update(gpu=torch.cuda.get_device_name(self._device), pinned_memory=True)
        else:
            info.update(cpu_capability=torch.backends.cpu.get_cpu_capability(),
                        malloc_tuned=torchsetup.malloc_tuned())
        return info

    # -- inference -------------------------------------------------------------------------
    def embed(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Unit vectors for the chips, in micro-batches of at most ``batch_size``."""
        self.load()
        step = self.cfg.batch_size
        parts = [self._embed_batch(chips[i:i + step]) for i in range(0, len(chips), step)]
        return np.concatenate(parts) if parts else np.zeros((0, dlibnet.DIM), np.float32)

    def _embed_batch(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        with self._lock:
            host = self._stack(chips)
            graphed = self._graphed
            if graphed is not None and len(chips) <= graphed.batch:
                with torch.no_grad():
                    return graphed.run(host).numpy()
            with torch.inference_mode():
                x = pixels(host.to(self._device, non_blocking=self._pinned), self._channels_last)
                out = F.normalize(self._forward(x).float(), p=2, dim=1)
                return out.cpu().numpy()

    def _stack(self, chips: Sequence[np.ndarray]) -> torch.Tensor:
        """One uint8 [n, 150, 150, 3] tensor (in a reused pinned buffer on CUDA)."""
        try:
            return self._host.stack(chips, self._pinned, self.cfg.batch_size)
        except (ValueError, TypeError):
            check_chips(chips)
            raise

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module on float pixels already on the device; raw (unnormalised) descriptors."""
        assert self._model is not None
        if self._dtype is not None:
            x = x.to(self._dtype)
        with torch.autocast(self._device.type, dtype=self._autocast or torch.float32,
                            enabled=self._autocast is not None, cache_enabled=False):
            return self._model(x)

    # -- the bare model, for bench ingest ----------------------------------------------------
    def standard_batch(self, batch_size: int, seed: int = 0) -> torch.Tensor:
        """Random pixel values as ``forward`` takes them: on the device, in the layout in force."""
        self.load()
        gen = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (batch_size, 3, *CHIP_SHAPE[:2]), generator=gen).float()
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        return x.to(self._device).contiguous(memory_format=fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bare model on a ``standard_batch``; returns once the device has finished."""
        with torch.inference_mode():
            out = self._forward(x)
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
        return out


def check_chips(chips: Sequence[Any]) -> None:
    """Name the first chip that is not what ``prepare`` makes."""
    for i, chip in enumerate(chips):
        if getattr(chip, "shape", None) != CHIP_SHAPE or getattr(chip, "dtype", None) != np.uint8:
            raise ValueError(f"face {i}: expected a uint8 chip of shape {CHIP_SHAPE} from "
                             f"prepare(), got {getattr(chip, 'dtype', type(chip).__name__)} "
                             f"{getattr(chip, 'shape', '')}")
