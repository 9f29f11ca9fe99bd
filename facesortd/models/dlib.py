"""dlib's face-recognition ResNet (face_recognition_models): 128-d vectors, fully offline.

``prepare`` finds five landmarks in the box and cuts dlib's aligned 150x150 chip; ``embed`` runs
the ResNet on a list of chips. ``embedder.dlib_runtime`` chooses who runs the ResNet: ``torch``
(the default: ``dlibtorch``, batched, CPU or CUDA, the weights read from the same .dat file) or
``dlib`` (its own ``compute_face_descriptor``, one chip at a time on one core). Both give the
same vectors (cosine >= 0.9999, tested on every chip of shared/data), so the model id is the same.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from facesortd.config import EmbedderConfig
from facesortd.errors import ModelUnavailable
from facesortd.models.base import TUNED_EPS, Box

CHIP_SIZE = 150
CHIP_PADDING = 0.25
INSTALL_HINT = "pip install 'facesortd[dlib]' (dlib-bin and face_recognition_models)"


class DlibEmbedder:
    """dlib ResNet descriptors, L2-normalised (see ``default_eps`` for why)."""

    name = "dlib"
    dim = 128
    model_id = "dlib-resnet-v1"
    #: Euclidean distance between the *normalised* descriptors. dlib's raw descriptors have norms
    #: 1.16-1.64 (mean 1.40) on shared/data/faces, so distances shrink by ~1/1.4 once normalised;
    #: normalising separates people slightly better (270 faces, HOG detector, largest face: same
    #: person 0.32 +- 0.06, different 0.57 +- 0.06, AUC 0.9943, d' 4.34; raw: AUC 0.9939, d' 4.11;
    #: nearest neighbour 98.9% either way). At 0.43, 96% of same-person pairs and 1.5% of
    #: different-person pairs are within reach: the value facesortd.clustering is tuned for
    #: (it splits chained clusters). Plain DBSCAN peaks lower, at 0.35 (BCubed F1 0.94-0.955).
    default_eps = TUNED_EPS["dlib"]

    def __init__(self, cfg: Optional[EmbedderConfig] = None):
        self.cfg = cfg if cfg is not None else EmbedderConfig(name="dlib")
        self.runtime = self.cfg.dlib_runtime
        self._lock = threading.Lock()        # loading, and dlib's ResNet
        self._shape_lock = threading.Lock()  # dlib objects are not documented as thread-safe
        self._dlib: Any = None
        self._predictor: Any = None
        self._encoder: Any = None            # dlib.face_recognition_model_v1 or TorchDlibResNet

    def load(self) -> None:
        """Import dlib, read the shape predictor and load the ResNet in the runtime configured
        (once)."""
        with self._lock:
            if self._encoder is not None:
                return
            try:
                import dlib
            except ImportError as exc:
                raise ModelUnavailable(f"the dlib embedder needs dlib ({exc}); {INSTALL_HINT}") from None
            landmarks, resnet = _model_files()
            self._predictor = dlib.shape_predictor(str(landmarks))
            self._dlib = dlib
            if self.runtime == "torch":
                from facesortd.models.dlibtorch import TorchDlibResNet
                encoder = TorchDlibResNet(self.cfg, resnet)
                encoder.load()
                self._encoder = encoder
            else:
                self._encoder = dlib.face_recognition_model_v1(str(resnet))

    def describe(self) -> dict:
        info = {"name": self.name, "dim": self.dim, "model_id": self.model_id,
                "loaded": self._encoder is not None, "runtime": self.runtime,
                "normalised": True, "chip": f"{CHIP_SIZE}px padding {CHIP_PADDING}"}
        if self.runtime == "torch":
            info["runtime"] = "torch (dlib's ResNet read from its .dat file)"
            if self._encoder is not None:
                info.update(self._encoder.describe())
            else:
                info.update(device=self.cfg.device, precision=self.cfg.precision)
        else:
            info.update(runtime="dlib (compute_face_descriptor)", device="cpu", precision="fp32",
                        threads=1)
        return info

    def prepare(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Five landmarks inside ``box`` (rounded, clipped), then dlib's aligned chip:
        uint8 (150, 150, 3). For a whole face crop pass the whole image as the box."""
        if self._predictor is None:
            self.load()
        dlib = self._dlib
        image = np.ascontiguousarray(image, dtype=np.uint8)
        h, w = image.shape[:2]
        left, top = max(0, int(round(box[0]))), max(0, int(round(box[1])))
        right, bottom = min(w - 1, int(round(box[2]))), min(h - 1, int(round(box[3])))
        if right <= left or bottom <= top:
            raise ValueError(f"face box {tuple(box)} is empty inside a {w}x{h} image")
        rect = dlib.rectangle(left, top, right, bottom)
        with self._shape_lock:
            shape = self._predictor(image, rect)
        return dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def embed(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [N, 128] unit vectors for chips made by ``prepare``."""
        if self._encoder is None:
            self.load()
        if len(faces) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.runtime == "torch":
            return self._encoder.embed(faces)
        shape = (CHIP_SIZE, CHIP_SIZE, 3)
        chips = []
        for i, face in enumerate(faces):
            if getattr(face, "shape", None) != shape or face.dtype != np.uint8:
                raise ValueError(f"face {i}: expected a uint8 chip of shape {shape} from prepare(), "
                                 f"got {getattr(face, 'dtype', type(face).__name__)} "
                                 f"{getattr(face, 'shape', '')}")
            chips.append(np.ascontiguousarray(face))
        with self._lock:   # the pipeline calls this from one thread; the lock keeps it so
            vectors = self._encoder.compute_face_descriptor(chips, num_jitters=0)
        out = np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)
        return raw_to_unit(out)

    # -- the bare model (torch runtime), for bench ingest ------------------------------------
    def standard_batch(self, batch_size: int, seed: int = 0) -> Any:
        return self._torch().standard_batch(batch_size, seed)

    def forward(self, x: Any) -> Any:
        return self._torch().forward(x)

    def _torch(self) -> Any:
        if self.runtime != "torch":
            raise ModelUnavailable("the bare model is measured with embedder.dlib_runtime: torch")
        self.load()
        return self._encoder


def raw_to_unit(vectors: np.ndarray) -> np.ndarray:
    """dlib's descriptors have norms near, not at, 1; the Embedder contract is unit rows."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _model_files() -> tuple[Path, Path]:
    """The 5-point shape predictor and the ResNet from face_recognition_models. Its
    ``__init__`` imports pkg_resources, which setuptools >= 81 no longer ships, so fall back to
    finding the package folder without importing it."""
    try:
        import face_recognition_models as frm
        files = (Path(frm.pose_predictor_five_point_model_location()),
                 Path(frm.face_recognition_model_location()))
    except ImportError:
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(
                f"the dlib embedder needs the face_recognition_models package; {INSTALL_HINT}") from None
        models = Path(list(spec.submodule_search_locations)[0]) / "models"
        files = (models / "shape_predictor_5_face_landmarks.dat",
                 models / "dlib_face_recognition_resnet_model_v1.dat")
    for path in files:
        if not path.is_file():
            raise ModelUnavailable(f"dlib model file {path} is missing; reinstall it: {INSTALL_HINT}")
    return files
