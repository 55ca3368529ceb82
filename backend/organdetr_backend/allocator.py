"""glibc's memory allocator, set for a process that handles one big scan after another.

By default glibc serves every block above 32 MB (a CT's voxels, its float copy, the network's feature maps) with a
fresh ``mmap`` and gives it back to the OS when it is freed, so every request touches ~0.45 GB of fresh pages: on the
chest CT ~110k page faults, ~0.3 s of a 1.2 s request on 2 threads (``benchmarks/backend_benchmark.py``). Kept (big
blocks from the heap, freed memory left in it for the next request, one heap for all threads, since the service runs
requests on worker threads and a thread's own heap is too small for these blocks), a warm request takes ~0.9 s. The
price: the process holds on to its peak memory between requests. Only the console script's process is set (not a
process that imports the backend), and not where the user chose otherwise.
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP_FREED_MEMORY = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1))
# Set to any value to keep glibc's defaults (memory is returned to the OS after each request).
RELEASE_MEMORY_ENV = "ORGANDETR_RELEASE_MEMORY"
GLIBC_TUNABLES_ENV = "GLIBC_TUNABLES"


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or no GNU libc
        return False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module); whether it was set. Nothing where the C library is not
    glibc, where ``ORGANDETR_RELEASE_MEMORY`` is set, or where ``GLIBC_TUNABLES`` already tunes malloc."""
    if os.environ.get(RELEASE_MEMORY_ENV) or "malloc" in os.environ.get(GLIBC_TUNABLES_ENV, "") or not _is_glibc():
        return False
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(option, value) == 1 for option, value in KEEP_FREED_MEMORY)
