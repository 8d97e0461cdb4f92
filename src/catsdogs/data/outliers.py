"""Photos of anything else ("neither a cat nor a dog"): a folder of real non-pet photos, split by
kind, and cheap synthetic outliers.

A folder of other photos is scanned like a pet folder (every file decoded once, unreadable ones
skipped with a reason, exact duplicates dropped); a photo's *kind* is its folder relative to the
root (``flowers/daisy``). One kind is held out of training and validation entirely
(``unseen``), so the run can estimate how the method does on a kind of photo it never saw; the
other kinds are split train/val/test, stratified by kind, with the pets' seed.

Synthetic outliers (Hendrycks, Mazeika & Dietterich 2019 use such images as extra outliers) come
in :data:`SYNTHETIC_KINDS`; the last one, screenshot-like text, is never trained on and measures
an unseen synthetic kind.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from sklearn.model_selection import train_test_split

from catsdogs.data.scan import Agree, Keep, Share, Skipped, inspect_all, inspect_file, walk_files
from catsdogs.errors import DataError, RunError, display_path
from catsdogs.io import atomic_write_text

OUTLIER_TARGET = 0.5
"""Training target P(dog) of an outlier: the uniform distribution over cat and dog (outlier
exposure's target)."""

SYNTHETIC_KINDS = ("noise", "smooth_noise", "flat", "gradient", "stripes", "checker", "shapes",
                   "text")
"""Families of synthetic outliers; :data:`UNSEEN_SYNTHETIC` is only ever used for testing."""
UNSEEN_SYNTHETIC = "text"
"""The synthetic family held out of training (screenshot-like text on a plain background)."""


@dataclass(frozen=True)
class OtherPhoto:
    """A readable non-pet photo: its path, kind (folder relative to the root) and SHA-256."""

    path: str
    kind: str
    sha256: str


@dataclass(frozen=True)
class OtherExample:
    """One row of ``other.csv``: path, kind and split (``train``, ``val``, ``test`` or
    ``unseen``, the held-out kind)."""

    path: str
    kind: str
    split: str


def _inspect(path: str, kind: str, keep: Keep | None, decode: bool = True
             ) -> OtherPhoto | Skipped:
    found = inspect_file(path, keep, decode)
    return found if isinstance(found, Skipped) else OtherPhoto(path, kind, found[0])


def scan_other(root: str | os.PathLike, *, keep: Keep | None = None, progress: bool = True,
               share: Share | None = None, agree: Agree | None = None
               ) -> tuple[list[OtherPhoto], list[Skipped]]:
    """Find, decode and deduplicate every photo below ``root``.

    Args:
        root: a folder of non-pet photos, in sub-folders by kind (files directly in ``root``
            are of kind ``"other"``).
        keep: called as ``keep(path, pixels)`` with each readable photo (see
            :func:`catsdogs.data.scan.scan_folder`).
        progress: show a progress bar.
        share, agree: a multi-worker scan (:func:`catsdogs.data.scan.inspect_all`).

    Returns:
        ``(photos, skipped)``: readable photos sorted by path, exact duplicates removed (the
        first path of each group kept), and the unreadable files with reasons.

    Raises:
        DataError: ``root`` is not a folder, or holds no readable photo.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"{display_path(root)}: no such folder of other photos")
    skipped: list[Skipped] = []
    files = walk_files(root, skipped)
    kinds = [os.path.relpath(os.path.dirname(f), root).replace(os.sep, "/") for f in files]
    kinds = ["other" if k == "." else k for k in kinds]
    found = inspect_all(lambda fk, decode: _inspect(*fk, keep, decode),
                        list(zip(files, kinds, strict=True)), share=share, agree=agree,
                        progress=progress, desc="scan other")
    photos, seen = [], set()
    for item in found:
        if isinstance(item, Skipped):
            skipped.append(item)
        elif item.sha256 not in seen:
            seen.add(item.sha256)
            photos.append(item)
    if not photos:
        raise DataError(f"{display_path(root)}: no readable photos ({len(skipped)} skipped)")
    return photos, sorted(skipped, key=lambda s: s.path)


def split_other(photos: list[OtherPhoto], seed: int, holdout: str | None,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[OtherExample]:
    """Split other photos: the ``holdout`` kind entirely into ``unseen``, the rest into
    train/val/test stratified by kind (scikit-learn's ``train_test_split``).

    Raises:
        DataError: ``holdout`` is not one of the kinds, or too few photos to split.
    """
    kinds = sorted({p.kind for p in photos})
    if holdout is not None and holdout not in kinds:
        raise DataError(f"held-out kind {holdout!r} is not among the other photos' kinds "
                        f"{kinds}")
    unseen = [p for p in photos if p.kind == holdout]
    rest = sorted((p for p in photos if p.kind != holdout), key=lambda p: p.path)
    if len(rest) < 10:
        raise DataError(f"too few other photos to split ({len(rest)} outside the held-out "
                        "kind; need at least 10)")
    strata = [p.kind for p in rest]
    stratify = strata if min(strata.count(k) for k in set(strata)) >= 10 else None
    train, tail = train_test_split(rest, test_size=fractions[1] + fractions[2],
                                   stratify=stratify, random_state=seed)
    val, test = train_test_split(tail, test_size=fractions[2] / (fractions[1] + fractions[2]),
                                 random_state=seed)
    out = []
    for name, part in (("train", train), ("val", val), ("test", test), ("unseen", unseen)):
        out += [OtherExample(p.path, p.kind, name) for p in sorted(part, key=lambda p: p.path)]
    return out


def default_holdout(photos: list[OtherPhoto]) -> str | None:
    """The kind held out by default: the last in sorted order, when there are at least two
    kinds (with one kind, nothing can be held out)."""
    kinds = sorted({p.kind for p in photos})
    return kinds[-1] if len(kinds) >= 2 else None


def save_other_split(examples: list[OtherExample], file: str) -> None:
    """Write ``other.csv`` atomically: columns ``path,kind,split``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "kind", "split"])
    writer.writerows([e.path, e.kind, e.split] for e in examples)
    atomic_write_text(file, buf.getvalue())


def load_other_split(file: str) -> list[OtherExample]:
    """Read ``other.csv``; an empty list when the run has none (trained without ``--other``).

    Raises:
        RunError: the file is malformed.
    """
    if not os.path.exists(file):
        return []
    try:
        with open(file, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            return [OtherExample(r["path"], r["kind"], r["split"]) for r in csv.DictReader(fh)]
    except (KeyError, csv.Error) as exc:
        raise RunError(f"{file}: malformed other-photos file ({exc})") from None


def _draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic outlier of ``kind``, ``(size, size, 3) uint8``."""
    colour = rng.integers(0, 256, 3)
    if kind == "noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if kind == "smooth_noise":
        small = rng.integers(0, 256, (int(rng.integers(2, 9)),) * 2 + (3,), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    if kind == "flat":
        return np.broadcast_to(colour, (size, size, 3)).astype(np.uint8)
    if kind == "gradient":
        t = np.linspace(0, 1, size)[:, None, None]
        other = rng.integers(0, 256, 3)
        img = (1 - t) * colour + t * other
        img = np.broadcast_to(img, (size, size, 3))
        return np.ascontiguousarray(np.rot90(img, int(rng.integers(4)))).astype(np.uint8)
    if kind in ("stripes", "checker"):
        period = int(rng.integers(4, size // 3))
        yy, xx = np.mgrid[:size, :size]
        mask = (xx // period) % 2 if kind == "stripes" else ((xx // period) + (yy // period)) % 2
        other = rng.integers(0, 256, 3)
        return np.where(mask[..., None] == 1, colour, other).astype(np.uint8)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    if kind == "shapes":
        for _ in range(int(rng.integers(2, 8))):
            x0, y0, x1, y1 = np.sort(rng.integers(0, size, 4).reshape(2, 2), axis=0).ravel()
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        return np.asarray(image)
    if kind == "text":
        for row in range(2, size - 10, int(rng.integers(10, 16))):
            words = " ".join("".join(chr(int(c)) for c in rng.integers(97, 123, int(n)))
                             for n in rng.integers(2, 9, int(rng.integers(2, 6))))
            draw.text((int(rng.integers(2, 12)), row), words, fill=tuple(int(c) for c in colour))
        return np.asarray(image)
    raise ValueError(f"unknown synthetic kind {kind!r}; choose one of {SYNTHETIC_KINDS}")


def synthetic_outliers(n: int, size: int, seed: int, kinds: tuple[str, ...] | None = None
                       ) -> np.ndarray:
    """``n`` synthetic outliers, ``(n, size, size, 3) uint8``, the ``kinds`` in turn (default:
    every family but :data:`UNSEEN_SYNTHETIC`); the same arguments give the same images."""
    kinds = kinds or tuple(k for k in SYNTHETIC_KINDS if k != UNSEEN_SYNTHETIC)
    rng = np.random.default_rng(seed)
    images = [_draw(kinds[i % len(kinds)], size, rng) for i in range(n)]
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
