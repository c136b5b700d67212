"""Certificate files as grid sites keep them."""
from __future__ import annotations

import os


def ca_bundle_from_dir(directory: str) -> str:
    """The PEM certificates of a grid-style CA directory (hashed ``*.0`` files), as one text.

    Python's ``capath`` would do, but stomp.py only passes a CA *file* to
    ``load_verify_locations``. CRLs (``*.r0``) are not checked.
    """
    seen, parts = set(), []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        real = os.path.realpath(path)           # hashed names are often links to the same file
        if not os.path.isfile(path) or real in seen:
            continue
        seen.add(real)
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                text = handle.read(1 << 20)
        except OSError:
            continue
        if "-----BEGIN CERTIFICATE-----" in text:
            parts.append(text.strip())
    if not parts:
        raise ValueError(f"no PEM certificates in {directory}")
    return "\n".join(parts) + "\n"
