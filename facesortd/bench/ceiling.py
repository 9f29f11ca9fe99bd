"""``facesortd bench ingest --ceiling``: the pipeline's own limit, with a model that costs ~nothing.

``CeilingEmbedder`` is for that benchmark only (the daemon never creates it): a tiny real torch
module (mean colour of a 20x20 subsample -> a fixed random 3x512 projection -> L2 norm) that takes
the same uint8 160x160 crops as facenet and returns deterministic 512-d unit vectors. Everything
else is the real pipeline (decode, hashing, the store, callbacks), so images/s with it is the most
the pipeline can feed any model on this machine. It reports ``device: none``, which the pipeline
schedules like an accelerator (workers never wait for the model, as on CUDA).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from facesortd.models.base import Box

INPUT_SIZE = 160


class CeilingEmbedder:
    """Benchmark-only embedder: facenet's input and output shapes, a forward pass that costs ~0."""

    name = "bench-ceiling"
    dim = 512
    crop_size = INPUT_SIZE
    default_eps = 0.9
    model_id = "bench-ceiling:v1"

    def __init__(self) -> None:
        self._module: Any = None

    def load(self) -> None:
        """Build the tiny module (fixed seed, so vectors depend only on the pixels)."""
        if self._module is not None:
            return
        import torch

        # Like a model on a GPU, it needs no CPU thread pool: one thread, so no OpenMP workers
        # spin on the cores the pipeline is being measured on (benchmark processes only).
        torch.set_num_threads(1)
        gen = torch.Generator().manual_seed(0)
        proj = torch.nn.Linear(3, self.dim, bias=True)
        with torch.no_grad():
            proj.weight.copy_(torch.randn(self.dim, 3, generator=gen))
            proj.bias.copy_(torch.randn(self.dim, generator=gen))
        self._module = proj.eval().requires_grad_(False)

    def prepare(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Not used in aligned mode (the pipeline resizes whole crops to ``crop_size``)."""
        from PIL import Image

        h, w = image.shape[:2]
        x1, y1 = int(max(box[0], 0)), int(max(box[1], 0))
        x2, y2 = int(min(box[2], w)), int(min(box[3], h))
        crop = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
        return np.asarray(crop.resize((INPUT_SIZE, INPUT_SIZE)))

    def embed(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [N, 512] unit vectors from uint8 (160, 160, 3) crops, like facenet's embed."""
        import torch

        self.load()
        if len(faces) == 0:
            return np.zeros((0, self.dim), np.float32)
        # A 20x20 subsample of each face: copying whole batches would be model cost, not pipeline
        x = torch.from_numpy(np.stack([face[::8, ::8] for face in faces]))
        with torch.inference_mode():
            mean = x.float().mean(dim=(1, 2)) / 255.0
            out = torch.nn.functional.normalize(self._module(mean), p=2, dim=1)
        return out.numpy()

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "loaded": self._module is not None,
                "model_id": self.model_id, "device": "none",
                "what": "benchmark only: tiny torch module, forward costs ~nothing"}
