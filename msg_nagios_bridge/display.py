"""Remote text made safe to show an operator: in a terminal, a log line, the status.

Header names and values, destinations, plugin output and broker error texts come
from outside. Printed raw, an ESC sequence rewrites the operator's terminal and a
U+202E (right-to-left override) makes a line read differently from what it
holds. Every print and log line of such text goes through ``printable`` (or
``quoted``, the same inside quotes).

Escaped: every character ``str.isprintable`` refuses, which is the C0 and C1
controls, DEL, the Unicode format characters (bidi overrides and isolates,
zero-width joiners, the BOM), line and paragraph separators, spaces other than
the ASCII space, surrogates (undecodable bytes) and unassigned code points.
Each becomes its ``repr`` escape (``\\x1b``, ``\\u202e``, ``\\t``). A backslash
is left as it is, so a text can imitate an escape; it cannot make one.
"""
from __future__ import annotations

from typing import Optional

CUT_MARKER = "...[cut, {total} characters in all]"


def printable(text: object, limit: Optional[int] = None, keep: str = "") -> str:
    """``text`` with every unprintable character escaped, cut to about ``limit`` characters.

    ``text`` may be str, bytes (decoded as UTF-8, other bytes shown as ``\\xNN``) or anything
    with a str(). ``keep``: characters left as they are (``"\\n\\t"`` for a multi-line body).
    A cut text ends with ``CUT_MARKER``; the escaped text before it is at most ``limit``
    characters and never ends in half an escape.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "backslashreplace")
    elif not isinstance(text, str):
        text = str(text)
    if (limit is None or len(text) <= limit) and text.isprintable():
        return text
    pieces = []
    size = 0
    for char in text:
        piece = char if char.isprintable() or char in keep else repr(char)[1:-1]
        if limit is not None and size + len(piece) > limit:
            return "".join(pieces) + CUT_MARKER.format(total=len(text))
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def quoted(value: object, limit: Optional[int] = 80) -> str:
    """A value for a message or log line: its repr (quoted, every unprintable character escaped
    as above), cut with ``...`` to ``limit`` characters (None: never cut)."""
    text = repr(value)
    return text if limit is None or len(text) <= limit else text[:limit] + "..."
