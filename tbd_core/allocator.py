"""Keep freed tensor memory in the process (glibc malloc), so CPU forward passes do not page-fault.

glibc serves large allocations with mmap and returns them (and the top of the heap) to the kernel when they
are freed; every forward pass then touches fresh zero pages again. On 2 CPU cores a forward of 4 guidance
branches of the tiny denoiser spent 34 of 219 ms in `copy_` (10x its share at 2 branches), and the step cost
grew 2.2x for 2x the rows; with the thresholds below it is 170 ms and 1.9x (`benchmarks/bench_sampler.py`).
PyTorch's CPU tuning guide makes the same point and recommends jemalloc or tcmalloc; this needs no preload.
The price: memory freed after a peak stays with the process (reused by the next allocation, not returned).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems


def keep_freed_memory() -> bool:
    """Allocations up to 32 MiB from the heap, and no trimming of its top; True when glibc accepted both
    (False elsewhere, e.g. musl or macOS, where nothing changes). Call once, early, in each process."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt here (%s); allocator left as it is", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    log.debug("glibc malloc: keep freed memory %s", "on" if ok else "refused")
    return ok
