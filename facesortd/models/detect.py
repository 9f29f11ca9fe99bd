"""Finding faces with MTCNN (facenet-pytorch), for batches of photos of any size.

facenet-pytorch batches only images of one size, and its ``MTCNN.detect`` post-processing fails
on batches whose images hold different numbers of faces (numpy >= 1.24 refuses ragged arrays).
So this module runs the three networks itself (``mtcnn_stages``, about 2.5x faster than
facenet-pytorch's ``detect_face`` on a CPU), groups images into size buckets, pads each bucket
with black to one shape (black holds no face; boxes are clipped to the real image), and does the
filtering itself. Boxes come back in ORIGINAL pixels: the caller passes the
``Decoded.scale`` of each image.

Threading: a ``FaceDetector`` belongs to the one model thread. It runs in the caller's thread on
torch's default intra-op pool and starts no threads or pools of its own; do not call ``detect``
from two threads at once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from facesortd.config import DetectorConfig
from facesortd.errors import ModelUnavailable
from facesortd.models.base import Box
from facesortd.models.mtcnn import run_stages

__all__ = ["Detection", "FaceDetector"]

log = logging.getLogger(__name__)

# MTCNN cannot find faces smaller than ~20 px reliably, and every smaller pyramid level costs more.
MIN_MTCNN_FACE = 20
# MTCNN's pyramid starts at ``min_face_size``; its boxes vary by a few percent around the true
# face size, so search a little below the size the filter keeps and let the filter decide.
MINSIZE_MARGIN = 0.8


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` (x1, y1, x2, y2) in original-image pixels and MTCNN's probability."""

    box: Box
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height

    def scaled(self, factor: float) -> "Detection":
        """The same face with its box multiplied by ``factor`` (``1 / scale`` -> decoded pixels)."""
        x1, y1, x2, y2 = self.box
        return Detection((x1 * factor, y1 * factor, x2 * factor, y2 * factor), self.score)


class FaceDetector:
    """MTCNN behind ``load()`` / ``detect(images, scales)``; weights load lazily on first use.

    ``max_batch`` bounds how many images go through MTCNN together (memory grows with it);
    ``bucket_px`` is the size step of the padding buckets: images whose height and width round up
    to the same multiple of it share a batch, padded by less than ``bucket_px`` on each side.
    """

    def __init__(self, config: Optional[DetectorConfig] = None,
                 device: Union[torch.device, str] = "cpu", *, max_batch: int = 8,
                 bucket_px: int = 64, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709):
        if max_batch < 1 or bucket_px < 1:
            raise ValueError("max_batch and bucket_px must be positive")
        self.config = config if config is not None else DetectorConfig()
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.bucket_px = bucket_px
        self.thresholds = tuple(thresholds)
        self.factor = factor
        self._mtcnn = None

    def load(self) -> None:
        """Load MTCNN's three small networks (shipped inside facenet-pytorch); idempotent."""
        if self._mtcnn is not None:
            return
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise ModelUnavailable(
                f"the face detector needs facenet-pytorch and torchvision ({exc}); "
                "install them with: pip install facenet-pytorch==2.5.3 torchvision") from exc
        try:
            mtcnn = MTCNN(keep_all=True, select_largest=False, min_face_size=MIN_MTCNN_FACE,
                          thresholds=list(self.thresholds), factor=self.factor, device=self.device)
        except (OSError, RuntimeError) as exc:
            raise ModelUnavailable(f"cannot load the MTCNN weights on {self.device}: {exc}") from exc
        # The batch arrives channels-last (an HWC array seen as NCHW); nets in the same layout
        # skip a reorder per layer: about 10% of detection time on a CPU.
        self._mtcnn = mtcnn.eval().to(memory_format=torch.channels_last)
        log.info("MTCNN loaded on %s", self.device)

    def describe(self) -> dict:
        return {"detector": "mtcnn", "device": str(self.device), "max_batch": self.max_batch,
                "bucket_px": self.bucket_px, "min_face_px": self.config.min_face_px,
                "min_probability": self.config.min_probability}

    def min_face_size(self, scale: float) -> int:
        """The pyramid's smallest face in decoded pixels for an image decoded at ``scale``."""
        return max(MIN_MTCNN_FACE, math.floor(MINSIZE_MARGIN * self.config.min_face_px / scale))

    def detect(self, images: Sequence[np.ndarray],
               scales: Optional[Sequence[float]] = None) -> list[list[Detection]]:
        """Faces in each RGB uint8 HxWx3 image, best first, boxes in original pixels.

        ``scales[i]`` maps image i to its original (``Decoded.scale``; default 1). Faces below
        ``min_probability`` or whose shorter side is under ``min_face_px`` original pixels are
        dropped. Any number of images and faces, of any mix of sizes, in one call.
        """
        scales = [1.0] * len(images) if scales is None else [float(s) for s in scales]
        if len(scales) != len(images):
            raise ValueError(f"{len(images)} images but {len(scales)} scales")
        for i, (img, s) in enumerate(zip(images, scales)):
            if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
                    and img.shape[2] == 3):
                raise ValueError(f"image {i} is not an RGB uint8 HxWx3 array")
            if not (s > 0 and math.isfinite(s)):
                raise ValueError(f"scale {i} must be a positive number, not {s}")
        results: list[list[Detection]] = [[] for _ in images]
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            minsize = self.min_face_size(scales[i])
            if min(h, w) < minsize:
                continue  # no face this large fits; MTCNN would build an empty pyramid and fail
            key = (-(-h // self.bucket_px), -(-w // self.bucket_px), minsize)
            groups.setdefault(key, []).append(i)
        if not groups:
            return results
        self.load()
        with torch.inference_mode():
            for (_, _, minsize), members in groups.items():
                for start in range(0, len(members), self.max_batch):
                    chunk = members[start:start + self.max_batch]
                    raw = self._run([images[i] for i in chunk], minsize)
                    for i, boxes in zip(chunk, raw):
                        results[i] = self._keep(boxes, images[i].shape, scales[i])
        return results

    def _run(self, batch: list[np.ndarray], minsize: int) -> list[np.ndarray]:
        """MTCNN on images padded to one shape: per image an (n, 5) array x1 y1 x2 y2 p."""
        height = max(img.shape[0] for img in batch)
        width = max(img.shape[1] for img in batch)
        stacked = np.zeros((len(batch), height, width, 3), dtype=np.uint8)
        for k, img in enumerate(batch):
            stacked[k, :img.shape[0], :img.shape[1]] = img
        imgs = torch.from_numpy(stacked).to(self.device).permute(0, 3, 1, 2).float()
        boxes, inds = run_stages(self._mtcnn, imgs, minsize, self.thresholds, self.factor)
        boxes, inds = boxes.cpu().numpy(), inds.cpu().numpy()
        return [boxes[inds == k] for k in range(len(batch))]

    def _keep(self, boxes: np.ndarray, shape: tuple[int, ...], scale: float) -> list[Detection]:
        h, w = shape[:2]
        cfg = self.config
        out = []
        for x1, y1, x2, y2, p in boxes.tolist():
            if not (p >= cfg.min_probability) or not all(map(math.isfinite, (x1, y1, x2, y2))):
                continue
            x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
            y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
            if min(x2 - x1, y2 - y1) * scale < cfg.min_face_px:
                continue
            out.append(Detection((x1 * scale, y1 * scale, x2 * scale, y2 * scale), float(p)))
        out.sort(key=lambda d: d.score, reverse=True)
        return out
