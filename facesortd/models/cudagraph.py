"""One CUDA graph for a whole embedding step, so a batch costs the model thread a few calls.

On a GPU the eager forward of InceptionResnetV1 launches hundreds of small kernels, each one a
Python-level call that needs the GIL; in the pipeline the decoding links hold the GIL often, so
the forward ran ~7x slower than the bare model. Captured once, the step (uint8 NHWC in ->
standardize (or the model's own input step) -> model under autocast -> L2-normalised float32 out) replays with one call. Inputs
and outputs are static buffers of the configured batch size; a partial batch is padded (rows are
independent in eval mode) and only its rows are read back.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Eager passes on the capture stream before capturing: cudnn autotuning, lazy handles and
#: allocations must happen outside the capture.
WARMUP_PASSES = 3


class HostBatch:
    """The uint8 NHWC batch an embedding step reads from: one ``np.stack`` of the faces, into a
    reused pinned buffer where the step copies to a GPU (``pinned``), else a fresh array.
    Raises ValueError when the faces are not uint8 arrays of ``shape``."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)
        self.buffer: Optional[torch.Tensor] = None   # the pinned one, once made

    def stack(self, faces: Sequence[np.ndarray], pinned: bool, capacity: int) -> torch.Tensor:
        n = len(faces)
        if not pinned:
            stacked = np.stack(faces)
            if stacked.dtype != np.uint8 or stacked.shape[1:] != self.shape:
                raise ValueError(f"not uint8 faces of shape {self.shape}")
            return torch.from_numpy(stacked)
        if self.buffer is None or self.buffer.shape[0] < n:
            cap = max(n, capacity)
            self.buffer = torch.empty((cap, *self.shape), dtype=torch.uint8).pin_memory()
        # Safe to overwrite: the previous step waited for its results (a synchronous .cpu()).
        np.stack(faces, out=self.buffer.numpy()[:n], casting="no")
        return self.buffer[:n]


def standardize(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC on the device -> facenet-pytorch's fixed_image_standardization, NCHW float."""
    x = x.permute(0, 3, 1, 2)          # NCHW view of NHWC memory = channels_last already
    if not channels_last:
        x = x.contiguous()
    return x.float().sub_(127.5).div_(128.0)


class GraphedEmbed:
    """``run(host_uint8[n])`` -> float32 [n, dim] unit vectors on the CPU, for n <= batch."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 batch: int, size: int, channels_last: bool,
                 prep: Callable[[torch.Tensor, bool], torch.Tensor] = standardize):
        """``prep`` turns the uint8 NHWC input into what ``forward`` takes (facenet's
        standardization by default; dlib's ResNet takes plain float pixels)."""
        self.batch = batch
        self._static_in = torch.zeros((batch, size, size, 3), dtype=torch.uint8, device=device)
        step = lambda: F.normalize(  # noqa: E731
            forward(prep(self._static_in, channels_last)).float(), p=2, dim=1)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(WARMUP_PASSES):
                step()
        torch.cuda.current_stream(device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the daemon never touch CUDA, but must not break capture
        with torch.no_grad(), torch.cuda.graph(self._graph, stream=stream,
                                               capture_error_mode="thread_local"):
            self._static_out = step()
        torch.cuda.synchronize(device)

    def run(self, host: torch.Tensor) -> torch.Tensor:
        """Copy ``host`` (pinned uint8 [n, H, W, 3]) in, replay, and copy the n results out
        (a new CPU tensor: the next replay overwrites the static output)."""
        n = host.shape[0]
        self._static_in[:n].copy_(host, non_blocking=True)
        self._graph.replay()
        return self._static_out[:n].cpu()
