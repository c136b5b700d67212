"""The poison guard: a message whose judgement crashes or stalls the bridge cannot loop.

The broker redelivers a message that was never acked. If judging it kills the bridge (a
crash, or a stall that ends with systemd's watchdog), the restarted bridge would be handed
the same message and die again, for ever. So before a message is judged its fingerprint is
written to a small file beside the inbound spool, and cleared once the batch is handled. A
fingerprint still there at start-up names the message that was being judged when the bridge
died: it becomes a suspect. A suspect is judged again when it comes back, since the death may
have had another cause (a kill -9, the OOM killer, a reboot: the fault suite's kill -9 once
dead-lettered a good result this way). Only if the bridge dies while judging it a second time
is it poison: when it arrives again it goes to the dead letters as ``poison``, unjudged.

The per-message write is a store into a fixed-size slot of the file mapped in memory
(MAP_SHARED, no system call, no fsync; a pwrite() per message cost about 10% of the
subscriber's time): it survives the process being killed (it is in the page cache), which is
the case this guards against; a power cut is not caused by a message. The suspect list is rewritten (fsynced) only when it
changes, and is bounded.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import typing
from typing import Dict, List

log = logging.getLogger(__name__)

SLOT = 64                       # bytes: the fingerprint being judged, blank-padded
MAX_SUSPECTS = 100
BLANK = b" " * SLOT


def fingerprint(headers: typing.Mapping[str, str], body: bytes) -> str:
    """Stable across redelivery: the body and the headers the publisher set that the
    judgement reads, not the broker's per-delivery ones (ack, redelivered, subscription)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("result_id", "signature"):
        digest.update(headers.get(name, "").encode("utf-8", "surrogatepass") + b"\0")
    digest.update(body)
    return digest.hexdigest()


class PoisonGuard:
    def __init__(self, path: str):
        self.path = path
        self.strikes: Dict[str, int] = {}       # fingerprint -> deaths while judging it (1 or 2)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                text = handle.read(SLOT + 40 * MAX_SUSPECTS + 1024).decode("ascii", "replace")
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        judging, rest = text[:SLOT].strip(), text[SLOT:]
        for line in rest.split():
            print_, _, count = line.partition(":")
            if _is_fingerprint(print_):
                self.strikes[print_] = 2 if count == "2" else 1
        if _is_fingerprint(judging):
            self.strikes[judging] = min(self.strikes.get(judging, 0) + 1, 2)
            log.error("the bridge stopped while judging message %s (%s)", judging,
                      "twice: if it arrives again it goes to the dead letters as poison, unjudged"
                      if self.strikes[judging] == 2 else "once: it is judged again if it comes back")
        while len(self.strikes) > MAX_SUSPECTS:
            del self.strikes[next(iter(self.strikes))]
        self._judged: List[str] = []
        self._save()                    # the file is now longer than SLOT: it can be mapped
        self._slot = mmap.mmap(fd, SLOT)

    def is_suspect(self, print_: str) -> bool:
        """True for poison: the bridge died twice while judging this message."""
        return self.strikes.get(print_, 0) >= 2

    def judging(self, print_: str) -> None:
        """Note the message about to be judged (call ``idle`` when the batch is handled)."""
        self._slot[:] = print_.encode("ascii").ljust(SLOT)
        if print_ in self.strikes:
            self._judged.append(print_)

    def idle(self) -> None:
        self._slot[:] = BLANK
        if self._judged:                 # suspects judged without dying: not the cause
            for print_ in self._judged:
                self.strikes.pop(print_, None)
            self._judged = []
            self._save()

    def caught(self, print_: str) -> None:
        """The poison arrived and was dead-lettered: forget it."""
        if self.strikes.pop(print_, None) is not None:
            self._save()

    def _save(self) -> None:
        lines = "".join(f"\n{print_}:{count}" for print_, count in self.strikes.items())
        data = BLANK + lines.encode("ascii") + b"\n"
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))   # never shorter than the mapped slot (SIGBUS)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self._slot.close()
            os.close(self._fd)
            self._fd = -1


def _is_fingerprint(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)
