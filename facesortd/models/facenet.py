"""facenet-pytorch's InceptionResnetV1 with VGGFace2 weights: 512-d vectors from 160x160 crops.

Weights come from ``embedder.weights``, else the cache file facenet-pytorch itself uses, else the
download facenet-pytorch would do. The model id carries a hash of the weights file, so vectors of
two different weights files never share a store. Speed settings (bf16/fp16 autocast, channels_last,
cudnn autotuning, pinned host memory, a CUDA graph of the whole step; on the CPU, BatchNorm folded
into the convolutions) are chosen once at load and reported by ``describe()``.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facesortd.config import EmbedderConfig
from facesortd.errors import ModelUnavailable
from facesortd.fsops import sha256_of
from facesortd.models import torchsetup
from facesortd.models.base import TUNED_EPS, Box
from facesortd.models.cudagraph import GraphedEmbed, HostBatch, standardize

log = logging.getLogger(__name__)

WEIGHTS_NAME = "20180402-114759-vggface2.pt"
#: Where facenet-pytorch 2.5.3 downloads the VGGFace2 weights from (models/inception_resnet_v1.py).
WEIGHTS_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{WEIGHTS_NAME}"
INPUT_SIZE = 160
DOWNLOAD_STALL_S = 30.0


def facenet_cache_file() -> Path:
    """The file facenet-pytorch reads and downloads to: ``$TORCH_HOME/checkpoints/<name>``
    (TORCH_HOME defaults to ``$XDG_CACHE_HOME/torch``, i.e. ``~/.cache/torch``)."""
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home
    return Path(get_torch_home()) / "checkpoints" / WEIGHTS_NAME


def hub_cache_file() -> Path:
    """torch.hub's own checkpoint cache (``torch.hub.get_dir()/checkpoints``), also accepted."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


class FacenetEmbedder:
    """InceptionResnetV1 (VGGFace2). ``prepare`` crops a box like facenet-pytorch's
    ``extract_face(margin=0)``; ``embed`` takes uint8 (160, 160, 3) arrays."""

    name = "facenet"
    dim = 512
    crop_size = INPUT_SIZE  # aligned mode: the pipeline resizes whole crops to this and skips prepare
    #: L2 distance between unit vectors. VGGFace2 InceptionResnetV1 verification thresholds sit
    #: around 1.0-1.1; DBSCAN chains through borderline pairs, so clustering starts tighter. Not
    #: measured here: the real weights cannot be downloaded on the build machines.
    default_eps = TUNED_EPS["facenet"]

    def __init__(self, cfg: EmbedderConfig):
        self.cfg = cfg
        self._lock = threading.RLock()
        self._weights: Optional[Path] = None
        self._sha: Optional[str] = None
        self._model: Optional[torch.nn.Module] = None
        self._device = torch.device("cpu")
        self._amp: Optional[torch.dtype] = None
        self._channels_last = False
        self._pinned = False
        self._host = HostBatch(_FACE_SHAPE)   # the batch buffer (reused and pinned on CUDA)
        self._graphed: Optional[GraphedEmbed] = None
        self._graph_state = "off (not CUDA)"
        self._fold_state = "off (not loaded)"

    # -- weights ---------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return "facenet-vggface2:" + self._weights_sha()[:12]

    def _weights_sha(self) -> str:
        with self._lock:
            if self._sha is None:
                path = self._find_weights()
                self._sha = sha256_of(path)
                self._weights = path
            return self._sha

    def _find_weights(self) -> Path:
        """``embedder.weights``, else a cached copy, else download facenet-pytorch's file."""
        if self.cfg.weights is not None:
            path = Path(self.cfg.weights)
            if not path.is_file():
                raise ModelUnavailable(
                    f"embedder.weights: {path} does not exist or is not a file. Point it at the "
                    f"VGGFace2 state dict ({WEIGHTS_URL}), or remove the key to use the torch "
                    f"cache ({self._cache_hint()}); embedder.name: dlib works fully offline "
                    "(pip install 'facesortd[dlib]').")
            return path
        _import_facenet()
        for path in (facenet_cache_file(), hub_cache_file()):
            if path.is_file():
                return path
        return self._download(facenet_cache_file())

    @staticmethod
    def _cache_hint() -> str:
        try:
            return str(facenet_cache_file())
        except ModuleNotFoundError:
            return f"$TORCH_HOME/checkpoints/{WEIGHTS_NAME}"

    def _download(self, dst: Path) -> Path:
        # Looked up at call time so tests can replace it (the one place that needs the internet).
        from facenet_pytorch.models import inception_resnet_v1 as irv1

        log.info("downloading the VGGFace2 weights from %s to %s", WEIGHTS_URL, dst)
        # urllib waits forever on a network that drops packets; a stalled connect or read gives
        # up after this long (the download itself may take as long as it needs)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_STALL_S)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            irv1.download_url_to_file(WEIGHTS_URL, str(dst), progress=False)
        except Exception as exc:  # no network, proxy, TLS, disk full...: all one fix
            raise ModelUnavailable(
                f"The facenet (VGGFace2) weights are not on this machine and could not be "
                f"downloaded ({type(exc).__name__}: {exc}).\n"
                f"  - Get the file from {WEIGHTS_URL}\n"
                f"  - and put it at {dst} (or {hub_cache_file()}),\n"
                f"    or anywhere and set embedder.weights: /path/to/{WEIGHTS_NAME} in the config.\n"
                "  - Or use the dlib model, which works fully offline: pip install "
                "'facesortd[dlib]' (embedder.name: auto then picks it; or set embedder.name: dlib).") from None
        finally:
            socket.setdefaulttimeout(previous)
        if not dst.is_file():
            raise ModelUnavailable(f"the download of {WEIGHTS_URL} left no file at {dst}")
        return dst

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Find, hash and load the weights and choose the speed settings (once)."""
        if self._model is not None:
            return
        self._weights_sha()
        with self._lock:
            if self._model is not None:
                return
            from facesortd.models.embedders import resolve_device
            irv1 = _import_facenet()
            device = resolve_device(self.cfg.device)
            model = irv1.InceptionResnetV1(pretrained=None, classify=False)
            _load_state_dict(model, self._weights)
            model.eval().requires_grad_(False)
            self._choose_settings(device)
            model = self._maybe_fold(model, device)
            fmt = torch.channels_last if self._channels_last else torch.contiguous_format
            self._model = model.to(device=device, memory_format=fmt)
            self._device = device
            if device.type == "cuda":
                self._capture_graph()
            log.info("facenet ready: %s", self.describe())

    def _maybe_fold(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """CPU only: the folded copy (same fp32 results in fewer passes, see fastcpu.py), unless
        ``embedder.fold`` is off. CUDA keeps the model as built (its graph path is measured)."""
        if device.type != "cpu":
            self._fold_state = "off (not CPU)"
            return model
        if not self.cfg.fold:
            self._fold_state = "off (embedder.fold: false)"
            return model
        from facesortd.models.fastcpu import FoldedInceptionResnetV1
        self._fold_state = "on (BatchNorm, residual scales, shared 1x1 convolutions)"
        return FoldedInceptionResnetV1(model)

    def _capture_graph(self) -> None:
        """CUDA only: capture the embedding step at ``batch_size``; any failure means eager."""
        if not self.cfg.cuda_graphs:
            self._graph_state = "off (embedder.cuda_graphs: false)"
            return
        try:
            self._graphed = GraphedEmbed(self._forward, self._device, self.cfg.batch_size,
                                         INPUT_SIZE, self._channels_last)
            self._graph_state = f"on (batch {self.cfg.batch_size})"
        except Exception as exc:
            self._graphed = None
            self._graph_state = f"failed, eager: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("CUDA graph capture failed, embedding eagerly: %s: %s",
                        type(exc).__name__, exc)

    def _choose_settings(self, device: torch.device) -> None:
        precision = self.cfg.precision
        if device.type == "cuda":
            self._amp = {"auto": torch.float16, "fp16": torch.float16,
                         "bf16": torch.bfloat16, "fp32": None}[precision]
            self._channels_last = True
            self._pinned = True
            torch.backends.cudnn.benchmark = True  # fixed input size: autotuning pays off at once
            return
        torchsetup.limit_threads()
        torchsetup.warn_if_malloc_untuned()
        fast_bf16 = torchsetup.cpu_has_fast_bf16()
        if precision == "auto":
            self._amp = torch.bfloat16 if fast_bf16 else None
        elif precision == "bf16":
            self._amp = torch.bfloat16
            if not fast_bf16:
                log.warning("precision: bf16 on a CPU without native bf16 (AVX512-BF16/AMX) is "
                            "emulated and far slower than fp32; consider precision: auto")
        else:
            if precision == "fp16":
                log.warning("precision: fp16 is a CUDA setting; running fp32 on the CPU")
            self._amp = None
        # oneDNN prefers NHWC: measured ~20% faster for fp32 too (AVX2 EPYC, 2 cores, batch 32)
        self._channels_last = True
        self._pinned = False

    def describe(self) -> dict:
        info: dict[str, Any] = {"name": self.name, "dim": self.dim, "loaded": self._model is not None}
        if self._model is None:
            info.update(device=self.cfg.device, precision=self.cfg.precision)
            return info
        info.update(
            model_id=self.model_id,
            weights=str(self._weights),
            device=str(self._device),
            precision={None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self._amp],
            autocast=self._amp is not None,
            memory_format="channels_last" if self._channels_last else "contiguous",
            threads=torch.get_num_threads(),
            cuda_graphs=self._graph_state,
            fold=self._fold_state,
        )
        if self._device.type == "cuda":
            info.update(gpu=torch.cuda.get_device_name(self._device), cudnn_benchmark=True,
                        pinned_memory=self._pinned)
        else:
            info.update(cpu_capability=torch.backends.cpu.get_cpu_capability(),
                        native_bf16=torchsetup.cpu_has_fast_bf16(),
                        malloc_tuned=torchsetup.malloc_tuned())
        return info

    # -- inference -------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Crop ``box`` (clipped, truncated to ints like ``extract_face``) and resize it to
        160x160 with Pillow BILINEAR; returns uint8 (160, 160, 3)."""
        h, w = image.shape[:2]
        x1, y1 = int(max(box[0], 0)), int(max(box[1], 0))
        x2, y2 = int(min(box[2], w)), int(min(box[3], h))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"face box {tuple(box)} is empty inside a {w}x{h} image")
        crop = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
        return np.asarray(crop.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))

    def embed(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [N, 512] unit vectors for uint8 (160, 160, 3) face crops."""
        self.load()
        if len(faces) == 0:
            return np.zeros((0, self.dim), np.float32)
        host = self._stack(faces)
        graphed = self._graphed
        if graphed is not None and len(faces) <= graphed.batch:
            with torch.no_grad():
                return graphed.run(host).numpy()
        with torch.inference_mode():
            x = host.to(self._device, non_blocking=self._pinned)
            # facenet-pytorch's fixed_image_standardization, on the device, in one pass
            x = standardize(x, self._channels_last)
            out = F.normalize(self._forward(x).float(), p=2, dim=1)
            return out.cpu().numpy()

    def _stack(self, faces: Sequence[np.ndarray]) -> torch.Tensor:
        """All faces in one uint8 [n, 160, 160, 3] tensor (pinned on CUDA) with one np.stack;
        the per-face checks run only to name the face that made it fail."""
        try:
            return self._host.stack(faces, self._pinned, self.cfg.batch_size)
        except (ValueError, TypeError):
            _check_faces(faces)
            raise

    def standard_batch(self, batch_size: int, seed: int = 0) -> torch.Tensor:
        """A standardized random float batch as ``forward`` takes it: on the device, in the
        memory format in force (for measuring the bare model; ``embed`` makes its own)."""
        self.load()
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand((batch_size, 3, INPUT_SIZE, INPUT_SIZE), generator=gen) * 2 - 1
        return x.to(self._device).contiguous(memory_format=fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bare model on a batch from ``standard_batch``, under the settings in force; returns
        once the device has finished (the upper bound the pipeline is measured against)."""
        with torch.inference_mode():
            out = self._forward(x)
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bare model under the chosen autocast; ``x`` is standardized, on the device."""
        assert self._model is not None
        # No weight-cast cache: each weight is cast once per forward anyway, and CUDA graph
        # capture must not keep casts made outside it.
        with torch.autocast(self._device.type, dtype=self._amp or torch.float32,
                            enabled=self._amp is not None, cache_enabled=False):
            return self._model(x)


_FACE_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)


def _check_faces(faces: Sequence[Any]) -> None:
    """Raise a ValueError naming the first face that is not uint8 (160, 160, 3)."""
    for i, face in enumerate(faces):
        if getattr(face, "shape", None) != _FACE_SHAPE or getattr(face, "dtype", None) != np.uint8:
            raise ValueError(f"face {i}: expected a uint8 array of shape {_FACE_SHAPE}, got "
                             f"{getattr(face, 'dtype', type(face).__name__)} "
                             f"{getattr(face, 'shape', '')}")


def _import_facenet():
    try:
        from facenet_pytorch.models import inception_resnet_v1
    except ImportError as exc:
        raise ModelUnavailable(
            f"the facenet embedder needs facenet-pytorch 2.5.3 and torchvision ({exc}); "
            "pip install 'facenet-pytorch==2.5.3' torchvision, or use embedder.name: dlib "
            "(pip install 'facesortd[dlib]')") from None
    return inception_resnet_v1


def _load_state_dict(model: torch.nn.Module, path: Path) -> None:
    """Load a plain state dict or a training checkpoint holding one; a wrong file is a readable
    ModelUnavailable, not a page of missing keys."""
    what = f"embedder weights {path}"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"{what}: not a readable torch state dict ({first[:200]}). "
                               f"Expected the VGGFace2 file from {WEIGHTS_URL}.") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise ModelUnavailable(f"{what}: holds a {type(obj).__name__}, not a state dict of "
                               f"tensors. Expected the VGGFace2 file from {WEIGHTS_URL}.")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):      # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # classifier head
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelUnavailable(
            f"{what}: is not an InceptionResnetV1 state dict ({len(missing)} of {len(expected)} "
            f"weights missing, e.g. {missing[:3]}; {len(unexpected)} unknown, e.g. "
            f"{unexpected[:3]}). Expected the VGGFace2 file from {WEIGHTS_URL}.")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise ModelUnavailable(f"{what}: has the right names but wrong shapes ("
                               + "; ".join(lines[:3]) + "). Expected the VGGFace2 file from "
                               f"{WEIGHTS_URL}.") from None
