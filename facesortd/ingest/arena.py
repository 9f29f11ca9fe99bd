"""Shared memory between the pipeline and one decoding process, for the decoded pixels.

Through the socket, a chunk of 16 aligned crops (1.2 MB) cost the pipeline's process a pickle, a
read per socket buffer, a copy into a growing buffer and an unpickle, all holding the GIL. With an
arena the process writes the pixels into its region of an anonymous shared file (memfd: no name,
nothing to clean up after a crash) and sends only their places; the pipeline copies the region
out in one memcpy and hands out views of that copy. One region per chunk in flight: a region is
written again only after the pipeline read the chunk that used it. A picture that does not fit
(detect mode's big images) still travels through the socket.
"""

from __future__ import annotations

import math
import mmap
import os
from typing import Any, Optional

import numpy as np

#: Bytes per region: a chunk of 16 RGB 160x160 crops (1,228,800 bytes) fits with room to spare.
REGION_BYTES = 2 << 20
_ALIGN = 64

#: A packed picture in a result: (offset in its region, shape).
Place = tuple[int, tuple[int, ...]]


class Arena:
    """``regions`` regions of ``region_bytes`` in one shared mapping of ``fd``."""

    def __init__(self, fd: int, regions: int, region_bytes: int):
        self.fd, self.regions, self.region_bytes = fd, regions, region_bytes
        self._mm = mmap.mmap(fd, regions * region_bytes)

    @classmethod
    def create(cls, regions: int, region_bytes: int = REGION_BYTES) -> Optional["Arena"]:
        """A fresh arena, or None where the system has no memfd (pixels then go by socket)."""
        try:
            fd = os.memfd_create("facesortd-decode", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        try:
            os.ftruncate(fd, regions * region_bytes)
            return cls(fd, regions, region_bytes)
        except OSError:
            os.close(fd)
            return None

    @classmethod
    def attach(cls, fd: int, regions: int) -> "Arena":
        """The decoding process's side: the same mapping, from the fd it was given."""
        return cls(fd, regions, os.fstat(fd).st_size // regions)

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:   # a view is still alive somewhere: the mapping goes with it
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass

    # -- the decoding process ------------------------------------------------------------------
    def pack(self, region: int, results: list[Any]) -> list[Any]:
        """Move each result's pixels (item 2 of a tuple) into ``region`` while they fit; the
        result then carries its Place instead of the array."""
        view = np.frombuffer(self._mm, np.uint8, self.region_bytes, region * self.region_bytes)
        at, out = 0, []
        for result in results:
            rgb = result[2] if isinstance(result, tuple) else None
            if rgb is not None and at + rgb.nbytes <= self.region_bytes:
                view[at:at + rgb.nbytes] = rgb.reshape(-1)
                result = (*result[:2], (at, rgb.shape), *result[3:])
                at = -(-(at + rgb.nbytes) // _ALIGN) * _ALIGN
            out.append(result)
        return out

    # -- the pipeline --------------------------------------------------------------------------
    def unpack(self, region: int, results: list[Any]) -> list[Any]:
        """Copy ``region``'s pixels out in one go and put views of the copy back in the
        results; the region may be written again as soon as this returns."""
        used = 0
        for result in results:
            if isinstance(result, tuple) and type(result[2]) is tuple:
                at, shape = result[2]
                used = max(used, at + math.prod(shape))
        if not used:
            return results
        block = np.frombuffer(self._mm, np.uint8, used, region * self.region_bytes).copy()
        out = []
        for result in results:
            if isinstance(result, tuple) and type(result[2]) is tuple:
                at, shape = result[2]
                size = math.prod(shape)
                result = (*result[:2], block[at:at + size].reshape(shape), *result[3:])
            out.append(result)
        return out
