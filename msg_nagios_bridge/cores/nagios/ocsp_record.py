"""The frame around a result line on the OCSP FIFO, so that a split cannot forge a result.

Many OCSP shells write into one FIFO at once. A write over PIPE_BUF (4096 bytes)
is not atomic: the kernel can put another writer's bytes in the middle of it.
What follows the inserted bytes then starts mid-record, in plugin-controlled
text, and a bare result line (``MNB1S\\t...``) there would parse as a whole
result for any host the plugin output names. A length or a checksum alone does
not help: the plugin text can carry a well-formed fake one at the cut.

So each record is framed by two markers that plugin output cannot contain,
because they hold a secret, and that name the writer::

    <token>:<pid> <length>\\t<result line>\\t<token>:<pid>\\n

``token`` is 32 random ASCII letters that the bridge keeps beside the FIFO in
``<fifo>.token`` (mode 0640, group ``ocsp_pipe.group``, created at start when
missing, kept after): whoever may write the FIFO may read it; the
OCSP command reads it with the shell builtin ``read`` (no fork). ``pid`` is the
writing shell's ``$$``. ``length`` is the byte length of the result line.
A record is taken only if it starts with a marker, ends with the same marker
(same pid) and its result line has exactly ``length`` bytes. That is exact, not
probable: the bytes from a writer's first marker to its last hold all of its
bytes, in order, so any foreign byte among them changes the length; a span from
one writer's start to another's end has two pids, and two live shells never
share one. Everything else on the line is dead-lettered (``ocsp-split``,
``ocsp-no-token``, ``ocsp-old-format``), and a genuine record found whole after
a cut is still taken. The token is never stored: dead letters show ``<token>``.

The old, unframed format (``MNB1S`` lines written straight into the FIFO by
the OCSP command of an older version) is refused on the FIFO: there it is
exactly what a forged tail looks like. Regenerate the command with
``msg-nagios-bridge nagios-config``. The perfdata files keep the bare result
line: the Nagios core writes them itself, one whole line per write, with no
other writer in between.
"""
from __future__ import annotations

import secrets
import string
from typing import List, Tuple

TOKEN_SUFFIX = ".token"
TOKEN_LENGTH = 32
_TOKEN_ALPHABET = string.ascii_letters      # no digits: a pid ends where the next marker begins
_MAX_DIGITS = 10

Rejected = Tuple[bytes, str]


def token_path(fifo_path: str) -> str:
    """Beside the FIFO: the OCSP command's user can reach that directory (it writes the FIFO),
    which is not true of the spool directory (0700) when Nagios runs as another user."""
    return fifo_path + TOKEN_SUFFIX


def new_token() -> str:
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def is_token(text: str) -> bool:
    return len(text) == TOKEN_LENGTH and all(c in _TOKEN_ALPHABET for c in text)


def frame(line: bytes, token: str, pid: int = 1) -> bytes:
    """One framed record (with its newline), as the OCSP command writes it."""
    marker = f"{token}:{pid}".encode("ascii")
    return marker + b" %d\t" % len(line) + line + b"\t" + marker + b"\n"


def _digits(line: bytes, start: int) -> int:
    """The end of the run of ASCII digits at ``start`` (at most _MAX_DIGITS + 1 long)."""
    end = start
    while end < len(line) and end - start <= _MAX_DIGITS and 48 <= line[end] <= 57:
        end += 1
    return end


def unwrap(line: bytes, token: bytes) -> Tuple[List[bytes], List[Rejected]]:
    """The result lines of the genuine records in ``line`` (one FIFO line, without its
    newline), and the rest as (bytes, reason) to dead-letter, the token shown as ``<token>``.
    Linear in the length of the line."""
    prefix = token + b":"
    markers = []                     # (where the marker starts, where its pid ends, pid)
    at = line.find(prefix)
    while at >= 0:
        pid_end = _digits(line, at + len(prefix))
        if 0 < pid_end - at - len(prefix) <= _MAX_DIGITS:
            markers.append((at, pid_end, line[at + len(prefix):pid_end]))
        at = line.find(prefix, at + len(prefix))
    taken: List[bytes] = []
    rejected: List[Rejected] = []
    done = 0                         # bytes before this are taken or rejected
    index = 0
    while index + 1 < len(markers):
        start, start_end, pid = markers[index]
        end, end_end, end_pid = markers[index + 1]
        record = _record(line, start_end, end, pid, end_pid)
        ends_clean = end_end == len(line) or line.startswith(prefix, end_end)
        if record is None or not ends_clean:
            index += 1
            continue
        if start > done:
            rejected.append(_rejected(line[done:start], token))
        taken.append(record)
        done = end_end
        index += 2
    if done < len(line):
        rejected.append(_rejected(line[done:], token))
    return taken, rejected


def _record(line: bytes, after_start: int, end: int, pid: bytes, end_pid: bytes):
    """The result line between a start marker's pid and an end marker, or None."""
    if pid != end_pid or line[after_start:after_start + 1] != b" " or line[end - 1:end] != b"\t":
        return None
    length_end = _digits(line, after_start + 1)
    if not 0 < length_end - after_start - 1 <= _MAX_DIGITS or line[length_end:length_end + 1] != b"\t":
        return None
    body = line[length_end + 1:end - 1]
    return body if len(body) == int(line[after_start + 1:length_end]) and end - 1 > length_end else None


def _rejected(part: bytes, token: bytes) -> Rejected:
    shown = part.replace(token, b"<token>")
    if part.startswith(token + b":"):
        reason = "ocsp-split: a record whose end marker, pid or length does not check out (cut by another writer)"
    elif part.startswith((b"MNB1S\t", b"MNB1H\t")) and token not in part:
        reason = ("ocsp-old-format: a result line without the OCSP frame (an OCSP command from an older"
                  " version? install the one 'msg-nagios-bridge nagios-config' prints), or the tail of a"
                  " record cut by another writer")
    elif part[:1] == b":" and _digits(part, 1) > 1:
        reason = ("ocsp-no-token: a record with an empty token (could the OCSP command read"
                  f" the token file beside the FIFO, <fifo>{TOKEN_SUFFIX}?)")
    elif len(part) > TOKEN_LENGTH and part[TOKEN_LENGTH:TOKEN_LENGTH + 1] == b":" and \
            all(chr(c) in _TOKEN_ALPHABET for c in part[:TOKEN_LENGTH]):
        reason = f"ocsp-wrong-token: a record with another token (was the token file <fifo>{TOKEN_SUFFIX} replaced?)"
    else:
        reason = "ocsp-split: bytes outside any whole record (the tail of a record cut by another writer)"
    return shown, reason
