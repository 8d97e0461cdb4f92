"""Atomic file writes: a temporary file in the same folder, flushed, then ``os.replace``.

A crash (even ``kill -9``) leaves either the old file or the new one, never half of one
(POSIX ``rename`` is atomic within a file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``suffix`` is appended to the temporary name (Keras needs ``.keras``/``.weights.h5``
    endings). On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}",
                               dir=folder)
    os.close(fd)
    os.unlink(tmp)  # writers such as Keras refuse or misbehave on an existing file
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (undecodable file names survive)."""
    atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))
