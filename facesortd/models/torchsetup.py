"""Process-wide torch settings the embedders rely on: one thread pool sized to the cores we may
use, a CPU bf16 check, and the glibc malloc setting that keeps big activation buffers mapped."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

#: Without it glibc unmaps and re-faults the model's large activation buffers on every forward
#: (fp32 at batch 64 drops from ~95 to ~60 images/s on 2 cores). It only works when set before
#: the process starts, so the Makefile and the systemd unit set it; we can only warn.
GLIBC_TUNABLES_HINT = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def usable_cores() -> int:
    """CPU cores this process may run on (affinity and cgroup pinning included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def limit_threads() -> int:
    """Never run more intra-op threads than usable cores (oversubscription is very slow);
    never raise the count, and never touch the inter-op pool (only one pool, set once)."""
    cores = usable_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU runs bf16 convolutions natively (AVX512-BF16 or AMX). Without it oneDNN
    emulates bf16 and autocast is tens of times slower than fp32 (measured on AVX2 EPYC)."""
    if not torch.backends.mkldnn.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def malloc_tuned() -> bool:
    """Whether GLIBC_TUNABLES keeps freed big buffers mapped (see GLIBC_TUNABLES_HINT)."""
    return "glibc.malloc.mmap_max=0" in os.environ.get("GLIBC_TUNABLES", "")


def warn_if_malloc_untuned() -> None:
    if not malloc_tuned():
        log.warning("GLIBC_TUNABLES is not set: CPU inference may run ~1.5x slower at large "
                    "batches; start the process with GLIBC_TUNABLES=%s", GLIBC_TUNABLES_HINT)
