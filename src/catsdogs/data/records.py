"""Photos on disk for ``--cache disk``: files of fixed-size uint8 records, read at random.

A *records file* holds decoded photos of one side ``size``: record ``i`` is bytes ``i·R`` to
``(i+1)·R`` with ``R = size·size·3``, one ``(size, size, 3) uint8`` RGB photo in row-major
order, no header (the size is in the file's name, the count is its length ÷ ``R``). Its
*manifest* (a CSV file, column ``key``) names each record in order: a photo's path, or
:func:`synthetic_key` for a synthetic outlier. A records file plus its manifest is a
:class:`PhotoStore`.

Why fixed-size records read with ``os.pread``, and not TFRecord or tf.data's
``snapshot``/``cache(filename)``: those files are read sequentially, so shuffling them needs a
bounded shuffle buffer, which mixes only photos that are near each other in the file and
changes the training order against the in-memory path (whose shuffle buffer holds the whole
split). A record can be read at any position, so the dataset shuffles record *numbers*
(8 bytes per photo) with the in-memory path's own ``shuffle(size, seed=…)`` and reads each
batch's records: the same photos in the same order, so the same training, whichever the cache
(:func:`catsdogs.data.pipeline.make_dataset`).

Why ``os.pread`` and not ``mmap``: the pages of a mapped file count in the process's resident
set (RSS) as they are touched, so RSS would grow to the whole file's size over an epoch; with
``pread`` each record is copied into a batch-sized buffer, and the file's pages stay in the
kernel's page cache, which the kernel drops under memory pressure.

Writing is append-only and atomic (:class:`RecordWriter`): a complete file exists under its
final name or not at all; a killed write leaves only a temporary ``.….tmp`` file beside it,
which :func:`remove_partial` deletes. No TensorFlow here.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from catsdogs.io import atomic_write_text

SYNTHETIC_PREFIX = ":synthetic:"
"""Manifest keys of synthetic outliers start with this (a photo's key is its absolute path,
which never does)."""


def record_bytes(size: int) -> int:
    """Bytes of one record: ``size · size · 3``."""
    return size * size * 3


def synthetic_key(i: int) -> str:
    """The manifest key of synthetic outlier ``i``
    (:func:`catsdogs.data.outliers.synthetic_outliers`)."""
    return f"{SYNTHETIC_PREFIX}{i}"


def remove_partial(folder: str) -> list[str]:
    """Delete the temporary files that killed writes left in ``folder``; return their names."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp")]
    except FileNotFoundError:
        return []
    for name in names:
        os.unlink(os.path.join(folder, name))
    return names


class RecordWriter:
    """Write a records file sequentially, under a temporary name until :meth:`commit`.

    Memory: only Python's write buffer; each :meth:`append` goes to the file. Use it as a
    context manager (committed at the end, removed on an exception) or call :meth:`commit` /
    :meth:`abort`. :meth:`append` is not thread-safe: callers hold their own lock.

    Args:
        path: the final file name.
        size: the photos' side, pixels.
    """

    def __init__(self, path: str, size: int):
        self.path, self.size, self.count = os.fspath(path), size, 0
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, self.temp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.",
                                         suffix=".tmp", dir=folder)
        self._fh = os.fdopen(fd, "wb")

    def append(self, images: np.ndarray) -> int:
        """Append ``(k, size, size, 3) uint8`` photos; return the record number of the first.

        Raises:
            ValueError: wrong shape or dtype. OSError: the disk is full or failing.
        """
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) \
                or images.dtype != np.uint8:
            raise ValueError(f"expected (k, {self.size}, {self.size}, 3) uint8, got "
                             f"{images.shape} {images.dtype}")
        self._fh.write(np.ascontiguousarray(images).data)
        first, self.count = self.count, self.count + len(images)
        return first

    def commit(self) -> None:
        """Flush to disk and move the file to its final name (atomic: POSIX ``rename``)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.temp, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file (the final name is untouched)."""
        self._fh.close()
        if os.path.exists(self.temp):
            os.unlink(self.temp)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read ``len(view)`` bytes at ``offset`` straight into ``view``; return the bytes read."""
    if hasattr(os, "preadv"):  # Linux, BSD, macOS ≥ 11: one system call, no copy
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # other POSIX systems
    view[:len(data)] = data
    return len(data)


class Records:
    """A complete records file, read at random (:meth:`read`).

    Each :meth:`read` opens the file, so any number of threads may read at once, and the file
    is never held open between calls (it can be deleted or replaced at any time).

    Args:
        path: the file.
        size: the photos' side, pixels.

    Raises:
        OSError: the file does not exist. ValueError: its length is not a whole number of
            records.
    """

    def __init__(self, path: str, size: int):
        self.path, self.size = os.fspath(path), size
        length = os.path.getsize(self.path)
        if length % record_bytes(size):
            raise ValueError(f"{self.path}: {length} bytes is not a whole number of "
                             f"{size}×{size}×3 records")
        self.count = length // record_bytes(size)

    def __len__(self) -> int:
        return self.count

    def read(self, numbers) -> np.ndarray:
        """Records ``numbers`` (``(k,)`` integers, any order, repeats allowed), as
        ``(k, size, size, 3) uint8``.

        Raises:
            IndexError: a number outside ``0 … count-1``. OSError: the file shrank or cannot
                be read.
        """
        numbers = np.asarray(numbers, np.int64).reshape(-1)
        if len(numbers) and (numbers.min() < 0 or numbers.max() >= self.count):
            raise IndexError(f"{self.path}: records {numbers.min()}…{numbers.max()} asked, "
                             f"{self.count} held")
        out = np.empty((len(numbers), self.size, self.size, 3), np.uint8)
        flat, step = memoryview(out.reshape(-1)), record_bytes(self.size)
        if os.name == "nt":  # no pread on Windows: this call's own handle, seek and read
            with open(self.path, "rb", buffering=0) as fh:
                for i, n in enumerate(numbers):
                    fh.seek(int(n) * step)
                    fh.readinto(flat[i * step:(i + 1) * step])
            return out
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, n in enumerate(numbers):
                if _pread_into(fd, flat[i * step:(i + 1) * step], int(n) * step) != step:
                    raise OSError(f"{self.path}: short read at record {n} (file truncated?)")
        finally:
            os.close(fd)
        return out


def write_manifest(path: str, keys: list[str]) -> None:
    """Write the keys of a records file, in record order, atomically (CSV, column ``key``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key"])
    writer.writerows([k] for k in keys)
    atomic_write_text(path, buf.getvalue())


def read_manifest(path: str) -> list[str] | None:
    """The keys written by :func:`write_manifest`; None when the file is missing or malformed."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, csv.Error):
        return None
    if not rows or rows[0] != ["key"] or any(len(r) != 1 for r in rows[1:]):
        return None
    return [r[0] for r in rows[1:]]


@dataclass(frozen=True)
class OnDisk:
    """Photos on disk, in a chosen order: photo ``i`` is record ``index[i]`` of ``records``.

    Attributes:
        records: the records file.
        index: ``(n,) int64`` record numbers.
    """

    records: Records
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def read(self, positions) -> np.ndarray:
        """Photos at ``positions`` (``(k,)`` integers into :attr:`index`), ``(k, size, size, 3)
        uint8``."""
        return self.records.read(self.index[np.asarray(positions, np.int64)])


class PhotoStore:
    """A records file and its manifest: photos looked up by key (path).

    Use :meth:`open`; :meth:`select` gives the :class:`OnDisk` photos of a list of keys.
    """

    def __init__(self, records: Records, keys: list[str]):
        self.records, self.keys = records, keys
        self._number = {k: i for i, k in enumerate(keys)}

    @classmethod
    def open(cls, records_file: str, manifest_file: str, size: int
             ) -> tuple[PhotoStore | None, str]:
        """The complete store of these two files, or ``(None, why it cannot be used)``: a
        missing file, a length that is not a whole number of records, or a manifest that does
        not name every record."""
        keys = read_manifest(manifest_file)
        if not os.path.exists(records_file) or keys is None:
            return None, "not built yet"
        try:
            records = Records(records_file, size)
        except (OSError, ValueError) as exc:
            return None, str(exc)
        if records.count != len(keys):
            return None, (f"{records.count} records for {len(keys)} keys in "
                          f"{os.path.basename(manifest_file)}")
        return cls(records, keys), ""

    def missing(self, keys: list[str]) -> list[str]:
        """The ``keys`` this store does not hold."""
        return [k for k in keys if k not in self._number]

    def select(self, keys: list[str]) -> OnDisk:
        """The photos of ``keys``, in that order.

        Raises:
            KeyError: a key the store does not hold.
        """
        return OnDisk(self.records, np.fromiter((self._number[k] for k in keys), np.int64,
                                                count=len(keys)))
