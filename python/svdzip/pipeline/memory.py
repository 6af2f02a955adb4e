"""Give freed heap memory back to the OS between blocks, and keep large buffers out of the heap.

Block-by-block compression frees a block's statistics, its dense weights and the previous
hidden states at each step. glibc keeps such freed chunks in its heap (its mmap threshold
rises after the first large free), so RSS kept climbing by ~35 MB per block on SmolLM2 even
though live memory did not. malloc_trim(0) returns whole free pages; once per block it costs
milliseconds. Trimming between blocks does not help within one: the per-window buffers
(hidden states, MLP intermediates, fp64 copies: 1-35 MB each) are carved from the heap once
the threshold has risen, and freed pieces that are not contiguous stay resident. Fixing the
threshold at 1 MiB (`large_buffers_mmapped`) serves every such buffer by mmap and returns it at
free: one Qwen2.5-0.5B block's statistics pass held 528-547 MiB instead of 604-810 MiB
(bench/bench_block_memory.py). Elsewhere (macOS, musl, Windows) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE = 1 << 20


@functools.lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


def _malloc_trim():
    libc = _libc()
    return None if libc is None else libc.malloc_trim


def large_buffers_mmapped(threshold: int = LARGE) -> bool:
    """Serve allocations of `threshold` bytes or more by mmap from now on, for this process
    (a fixed threshold also stops glibc raising it); True where that was possible."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS; True where that was possible (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
