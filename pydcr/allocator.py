"""The process's CPU memory allocator: keep freed memory for reuse (glibc).

glibc's malloc hands large freed blocks back to the system: blocks above its mmap threshold (at
most 32 MiB) are unmapped when freed, and free memory at the top of the heap is trimmed. A CPU
training or embedding loop frees and allocates its activation tensors again at every step, so each
is paged in anew at its first write: a page fault and a zero fill per 4 KiB page.
:func:`retain_freed_memory` has malloc serve every block from the heap and keep freed memory there,
so the next step's tensors reuse resident pages (`python -m bench.allocator` measures the
difference). The setting is process-wide: the ``pydcr`` command applies it, the library does not,
and a program that imports pydcr decides for itself (jemalloc or tcmalloc loaded with LD_PRELOAD
reuse memory in the same way).
"""

from __future__ import annotations

import ctypes

__all__ = ["freed_memory_retained", "retain_freed_memory"]

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

# Whether retain_freed_memory applied in this process: malloc's settings cannot be read back, and
# reports (pydcr._machine) say which allocator behaviour their timings ran under.
_retained = False


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process: no block is mmap'd, the heap is not
    trimmed. The resident size then stays at its peak. Returns whether it applied: False, and
    nothing changed, where malloc is not glibc's."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt returns 1 on success; the trim threshold is an int, so 2 GiB is its largest value.
    global _retained
    _retained = _retained or (mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    return _retained


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` has applied in this process."""
    return _retained
