"""Find, label and validate the photos of a labelled folder, and find exact duplicates.

Two layouts are accepted (class order is fixed: cat = 0, dog = 1):

* one sub-folder per class, any case: ``Cat/ Dog/`` (Microsoft PetImages), ``cats/ dogs/``
  (the usual tutorial layout); sub-folders inside a class folder are searched too;
* the Kaggle "Dogs vs. Cats" flat layout, where the file name carries the label:
  ``cat.123.jpg``, ``dog.45.jpg``.

Every file is fully decoded once (the same :func:`catsdogs.data.images.load_image` that training
and prediction use), so a truncated or corrupt photo is found here, reported with its reason and
skipped, never met half-way through training. Training passes ``keep`` to hold on to each photo
resized to its input size, so the photos are decoded once per run, here, and not a second time
to fill the training cache ("decode-once uint8 caching").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from catsdogs.constants import CLASSES
from catsdogs.data.images import image_header, load_image, read_file
from catsdogs.errors import DataError, ImageError, display_path
from catsdogs.io import atomic_write_text

CLASS_FOLDER_NAMES: dict[str, int] = {"cat": 0, "cats": 0, "dog": 1, "dogs": 1}
"""Sub-folder names (compared lower-case) and the label they give."""

SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
"""File names that operating systems leave in photo folders; skipped and reported."""


@dataclass(frozen=True)
class Photo:
    """A readable, labelled photo.

    Attributes:
        path: absolute file path (``str``; non-UTF-8 names keep their bytes via surrogateescape).
        label: 0 = cat, 1 = dog.
        sha256: hex digest of the file's bytes (finds exact duplicates).
        width: width in pixels, after EXIF orientation.
        height: height in pixels, after EXIF orientation.
    """

    path: str
    label: int
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why (``reason`` is one short phrase)."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """Everything :func:`scan_folder` found.

    Attributes:
        root: the scanned folder (absolute).
        layout: ``"class-folders"`` or ``"file-names"``.
        photos: readable photos, sorted by path, duplicates included.
        skipped: unreadable or unlabelled files, with reasons.
        duplicate_groups: lists of ≥ 2 paths whose bytes are identical.
    """

    root: str
    layout: str
    photos: list[Photo] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)

    def counts(self, photos: list[Photo] | None = None) -> dict[str, int]:
        """Number of photos per class name (``{"cat": n0, "dog": n1}``)."""
        photos = self.photos if photos is None else photos
        out = dict.fromkeys(CLASSES, 0)
        for p in photos:
            out[CLASSES[p.label]] += 1
        return out

    def cross_class_groups(self) -> list[list[str]]:
        """Duplicate groups whose copies carry different labels (the label is ambiguous)."""
        label = {p.path: p.label for p in self.photos}
        return [g for g in self.duplicate_groups if len({label[x] for x in g}) > 1]

    def deduplicated(self) -> list[Photo]:
        """Photos with exact duplicates removed.

        Within a group of identical files with one label, the first path (sorted) is kept; a group
        whose copies carry different labels is dropped entirely, since its true label is unknown.
        """
        drop: set[str] = set()
        label = {p.path: p.label for p in self.photos}
        for group in self.duplicate_groups:
            if len({label[x] for x in group}) > 1:
                drop.update(group)
            else:
                drop.update(sorted(group)[1:])
        return [p for p in self.photos if p.path not in drop]

    def check_usable(self) -> None:
        """Raise :class:`DataError` unless both classes have at least one readable photo."""
        counts = self.counts(self.deduplicated())
        missing = [name for name, n in counts.items() if n == 0]
        if len(missing) == 2:
            raise DataError(f"{display_path(self.root)}: no readable photos found "
                            f"({len(self.skipped)} files skipped)")
        if missing:
            raise DataError(f"{display_path(self.root)}: only one class has photos "
                            f"(no readable '{missing[0]}' photos); need both cat and dog")

    def to_dict(self) -> dict:
        """A JSON-ready summary: counts, skipped files with reasons, duplicate groups."""
        kept = self.deduplicated()
        return {
            "root": display_path(self.root),
            "layout": self.layout,
            "counts": self.counts(),
            "counts_after_dedup": self.counts(kept),
            "n_readable": len(self.photos),
            "n_skipped": len(self.skipped),
            "skipped": [{"path": display_path(s.path), "reason": s.reason} for s in self.skipped],
            "duplicate_groups": [[display_path(x) for x in g] for g in self.duplicate_groups],
            "cross_class_duplicate_groups": [[display_path(x) for x in g]
                                             for g in self.cross_class_groups()],
            "n_removed_as_duplicates": len(self.photos) - len(kept),
            "usable": _usable(self),
        }

    def write_json(self, path: str) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def _usable(result: ScanResult) -> bool:
    try:
        result.check_usable()
    except DataError:
        return False
    return True


def is_hidden_or_system(name: str) -> bool:
    """True for hidden files (a leading dot) and OS leftovers such as Thumbs.db."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def walk_files(folder: str, skipped: list[Skipped]) -> list[str]:
    """All candidate files below ``folder`` (symbolic links to folders are not followed)."""
    found: list[str] = []

    def onerror(exc: OSError) -> None:
        skipped.append(Skipped(exc.filename or folder, f"cannot list folder ({exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=False):
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if is_hidden_or_system(d):
                dirnames.remove(d)
            elif os.path.islink(full):
                skipped.append(Skipped(full, "symbolic link to a folder (not followed)"))
        for name in filenames:
            full = os.path.join(dirpath, name)
            if is_hidden_or_system(name):
                skipped.append(Skipped(full, "hidden or system file"))
            else:
                found.append(full)
    return sorted(found)


def label_from_name(name: str) -> int | None:
    """Label from a Kaggle-style file name: ``cat.12.jpg`` → 0, ``Dog.7.png`` → 1, else None."""
    head = name.split(".", 1)[0].lower()
    return CLASS_FOLDER_NAMES.get(head) if "." in name else None


def find_labelled_files(root: str) -> tuple[str, list[tuple[str, int]], list[Skipped]]:
    """List the files of a labelled folder with their labels, without reading them.

    Returns:
        ``(layout, [(path, label), ...], skipped)``.

    Raises:
        DataError: ``root`` does not exist or is not a folder.
    """
    if not os.path.exists(root):
        raise DataError(f"{display_path(root)}: no such folder")
    if not os.path.isdir(root):
        raise DataError(f"{display_path(root)}: not a folder")
    skipped: list[Skipped] = []
    try:
        entries = sorted(os.listdir(root))
    except OSError as exc:
        raise DataError(f"{display_path(root)}: cannot list folder ({exc.strerror})") from None
    class_dirs = [(e, CLASS_FOLDER_NAMES[e.lower()]) for e in entries
                  if e.lower() in CLASS_FOLDER_NAMES and os.path.isdir(os.path.join(root, e))]
    labelled: list[tuple[str, int]] = []
    if class_dirs:
        layout = "class-folders"
        for name, label in class_dirs:
            labelled += [(p, label) for p in walk_files(os.path.join(root, name), skipped)]
        for e in entries:
            full = os.path.join(root, e)
            if (e, CLASS_FOLDER_NAMES.get(e.lower())) not in class_dirs and os.path.isfile(full) \
                    and not is_hidden_or_system(e):
                skipped.append(Skipped(full, "outside the class folders (no label)"))
    else:
        layout = "file-names"
        for path in walk_files(root, skipped):
            label = label_from_name(os.path.basename(path))
            if label is None:
                skipped.append(Skipped(path, "no label: not in a cat/dog folder and the file "
                                             "name does not start with 'cat.' or 'dog.'"))
            else:
                labelled.append((path, label))
    return layout, labelled, skipped


Keep = Callable[[str, np.ndarray], None]
"""Called as ``keep(path, pixels)`` for each readable photo, pixels ``(height, width, 3) uint8``,
from the scan's decoding threads."""


Share = tuple[int, int]
"""``(rank, size)``: in a multi-worker scan, this worker fully decodes the files whose index in
the (sorted, identical on every worker) file list is ``rank`` modulo ``size``, and reads only the
header of the others."""

Agree = Callable[[np.ndarray], np.ndarray]
"""Sums a ``(n_files,) float64`` vector over the workers (an all-reduce): how a multi-worker
scan learns which files another worker found unreadable."""


def inspect_file(path: str, keep: Keep | None = None, decode: bool = True
                 ) -> tuple[str, int, int] | Skipped:
    """Read and decode one file (passing its pixels to ``keep``): ``(sha256, width, height)``
    of a readable photo, or the :class:`Skipped` reason it cannot be used. Without ``decode``
    only the header is read (:func:`catsdogs.data.images.image_header`; ``keep`` is not
    called)."""
    try:
        data = read_file(path)
        if not decode:
            w, h = image_header(data, name=path)
            return hashlib.sha256(data).hexdigest(), w, h
        pixels = load_image(data, name=path)
    except ImageError as exc:
        return Skipped(path, exc.reason)
    if keep is not None:
        keep(path, pixels)
    h, w = pixels.shape[:2]
    return hashlib.sha256(data).hexdigest(), w, h


def _inspect(item: tuple[str, int], keep: Keep | None = None, decode: bool = True
             ) -> Photo | Skipped:
    path, label = item
    found = inspect_file(path, keep, decode)
    return found if isinstance(found, Skipped) else Photo(path, label, *found)


def inspect_all(inspect: Callable, items: list, *, share: Share | None = None,
                agree: Agree | None = None, workers: int | None = None,
                progress: bool = True, desc: str = "scan") -> list:
    """``inspect(item, decode)`` for every item in threads, with a progress bar; each outcome
    is a photo or a :class:`Skipped` (``item[0]`` is the path).

    With ``share`` (and ``agree``), a multi-worker scan: this worker decodes its share and
    reads only the header of the rest, then ``agree`` sums the workers' "unreadable" flags, and
    a file another worker could not decode is skipped here too (inspected again, fully, for
    its reason: it is a broken file, not a photo). Every worker ends with the same outcomes,
    and no photo is decoded by every worker.
    """
    rank, size = share or (0, 1)

    def one(indexed):
        i, item = indexed
        return inspect(item, i % size == rank)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        outcomes = list(tqdm(pool.map(one, enumerate(items)), total=len(items), desc=desc,
                             unit="file", disable=not progress, leave=False))
    if share is None or agree is None:
        return outcomes
    flags = np.array([isinstance(o, Skipped) for o in outcomes], np.float64)
    for i in np.flatnonzero(agree(flags)):
        if not isinstance(outcomes[i], Skipped):
            again = inspect(items[i], True)
            outcomes[i] = again if isinstance(again, Skipped) else Skipped(
                outcomes[i].path, "unreadable on another worker")
    return outcomes


def scan_folder(root: str | os.PathLike, *, workers: int | None = None,
                progress: bool = True, keep: Keep | None = None, share: Share | None = None,
                agree: Agree | None = None) -> ScanResult:
    """Scan a labelled folder: label every file, decode it to validate it, hash it.

    Args:
        root: the folder (either layout, see the module docstring).
        workers: decoding threads (default: CPU count; Pillow releases the GIL while decoding).
        progress: show a tqdm progress bar on stderr.
        keep: optional ``keep(path, pixels)``, called in the decoding threads with each
            readable photo's pixels (``(height, width, 3) uint8``, upright). Training passes a
            :class:`catsdogs.data.pipeline.ResizedPhotos` to keep every photo resized to its
            input size, so nothing is decoded twice.
        share, agree: a multi-worker scan (:func:`inspect_all`): every worker calls it with
            its ``(rank, size)`` and an all-reduce; each decodes only its share of the files
            and all return the same result.

    Returns:
        A :class:`ScanResult`; call :meth:`ScanResult.check_usable` to require both classes.

    Raises:
        DataError: ``root`` is missing or not a folder.
    """
    root = os.path.abspath(os.fspath(root))
    layout, labelled, skipped = find_labelled_files(root)
    result = ScanResult(root=root, layout=layout, skipped=skipped)
    outcomes = inspect_all(lambda item, decode: _inspect(item, keep, decode), labelled,
                           share=share, agree=agree, workers=workers, progress=progress,
                           desc=f"scan {display_path(os.path.basename(root)) or root}")
    for out in outcomes:
        (result.photos if isinstance(out, Photo) else result.skipped).append(out)
    result.skipped.sort(key=lambda s: s.path)
    by_hash: dict[str, list[str]] = defaultdict(list)
    for p in result.photos:
        by_hash[p.sha256].append(p.path)
    result.duplicate_groups = sorted(sorted(g) for g in by_hash.values() if len(g) > 1)
    return result


def summary_lines(result: ScanResult) -> list[str]:
    """Human-readable lines for ``catsdogs data check``: counts, every skipped file, duplicates."""
    counts = result.counts()
    kept = result.counts(result.deduplicated())
    lines = [f"{display_path(result.root)} ({result.layout} layout)",
             "  readable photos: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
             f"  skipped files: {len(result.skipped)}"]
    lines += [f"    SKIP {display_path(s.path)}: {s.reason}" for s in result.skipped]
    cross = {tuple(g) for g in result.cross_class_groups()}
    lines.append(f"  exact duplicate groups: {len(result.duplicate_groups)} "
                 f"({len(cross)} across classes)")
    for g in result.duplicate_groups:
        tag = "  [across classes: all copies dropped]" if tuple(g) in cross else ""
        lines.append("    DUP " + " = ".join(display_path(x) for x in g) + tag)
    lines.append("  after removing duplicates: " + ", ".join(f"{k} {v}" for k, v in kept.items()))
    return lines
