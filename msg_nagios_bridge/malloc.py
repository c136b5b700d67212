"""Keep a long-running bridge's RSS flat: large freed blocks go back to the OS (glibc only).

glibc serves a block of 128 KiB or more with a mapping of its own, unmapped when freed, until
the first such free: then it raises its threshold to that block's size (up to 32 MiB), and
later large blocks come from the calling thread's arena, where a freed block is kept unless it
lies at the top. The recent-id memory's hash table (8 MB at 200,000 ids) is rebuilt about every
280,000 results, by whichever thread runs the subscriber (a reload starts a new one, often on
another arena): a 90-minute soak saw the central bridge's RSS step up 8 MB at each rebuild
(63, 71, 79, 87 MB). A fixed threshold (setting it also turns the adjustment off) keeps every
large block its own mapping, so what is freed is returned.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3          # from glibc's <malloc.h>
LARGE_BLOCK = 128 * 1024       # glibc's own initial threshold


def keep_large_blocks_mapped(threshold: int = LARGE_BLOCK) -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc mallopt (then nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
