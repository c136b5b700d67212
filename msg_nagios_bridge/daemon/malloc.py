"""Keep a long-running bridge's RSS flat: return large freed blocks, use one arena (glibc only).

glibc serves a block of 128 KiB or more with a mapping of its own, unmapped when freed, until
the first such free: then it raises its threshold to that block's size (up to 32 MiB), and
later large blocks come from the calling thread's arena, where a freed block is kept unless it
lies at the top. The recent-id memory's hash table (8 MB at 200,000 ids) is rebuilt about every
280,000 results, by whichever thread runs the subscriber (a reload starts a new one, often on
another arena): a 90-minute soak saw the central bridge's RSS step up 8 MB at each rebuild
(63, 71, 79, 87 MB). A fixed threshold (setting it also turns the adjustment off) keeps every
large block its own mapping, so what is freed is returned.

glibc also gives threads arenas of their own (up to 8 per core), each keeping what its threads
freed. A reload ends the bridge's threads and starts new ones beside the old, which often land on
another arena: in a soak reloading every 10 minutes the site bridge's thread arenas grew
0.07 -> 1.5 MB in 45 minutes and kept rising, and an in-process bridge reloaded every minute
grew 0.36 -> 0.84 MB over 7 reloads; with one arena it stayed at 32.3 MB, all in [heap]. The
bridge's threads hold the GIL while they allocate, so one arena costs it no parallelism.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8               # from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
LARGE_BLOCK = 128 * 1024       # glibc's own initial threshold


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt(); False where there is none (then nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(param, value) == 1


def keep_large_blocks_mapped(threshold: int = LARGE_BLOCK) -> bool:
    """Fix glibc's mmap threshold; False where that cannot be done."""
    return _mallopt(M_MMAP_THRESHOLD, threshold)


def use_one_arena() -> bool:
    """Serve every thread from glibc's main arena; call before any thread starts. False where
    that cannot be done."""
    return _mallopt(M_ARENA_MAX, 1)
