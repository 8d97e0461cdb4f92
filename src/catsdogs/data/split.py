"""Seeded, stratified train/val/test split, saved as ``splits.csv`` (the run's manifest).

The split is made once per run, after exact duplicates are removed, so no image (by content) can
appear in two splits. Hyper-parameters are chosen on ``val``; ``test`` is read once, at the end.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

from sklearn.model_selection import train_test_split

from catsdogs.constants import CLASSES
from catsdogs.data.scan import Photo
from catsdogs.errors import DataError, RunError
from catsdogs.io import atomic_write_text

SPLITS: tuple[str, str, str] = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    """One row of ``splits.csv``: an image path, its label (0 = cat, 1 = dog) and its split."""

    path: str
    label: int
    split: str


def make_split(photos: list[Photo], seed: int,
               fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[Example]:
    """Split photos into train/val/test, stratified by label, reproducibly for a given seed.

    Uses scikit-learn's ``train_test_split`` twice with ``stratify=labels``.

    Args:
        photos: deduplicated photos.
        seed: random seed; the same photos and seed give the same split.
        fractions: train, val, test fractions (must sum to 1).

    Returns:
        Examples sorted by split then path.

    Raises:
        DataError: too few photos per class to give every split at least one photo of each class.
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    paths = sorted(photos, key=lambda p: p.path)
    labels = [p.label for p in paths]
    per_class = min(labels.count(0), labels.count(1))
    if per_class < 3 or per_class * min(fractions) < 1:
        raise DataError(f"too few photos to split: {labels.count(0)} cats, {labels.count(1)} dogs; "
                        f"need at least {max(3, int(1 / min(fractions)) + 1)} of each")
    train, rest = train_test_split(paths, test_size=fractions[1] + fractions[2],
                                   stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=fractions[2] / (fractions[1] + fractions[2]),
                                 stratify=[p.label for p in rest], random_state=seed)
    out = []
    for name, part in zip(SPLITS, (train, val, test), strict=True):
        out += [Example(p.path, p.label, name) for p in sorted(part, key=lambda p: p.path)]
    return out


def save_split(examples: list[Example], path: str | os.PathLike) -> None:
    """Write ``splits.csv`` atomically: columns ``path,label,class,split``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "class", "split"])
    for e in examples:
        writer.writerow([e.path, e.label, CLASSES[e.label], e.split])
    atomic_write_text(path, buf.getvalue())


def load_split(path: str | os.PathLike) -> list[Example]:
    """Read ``splits.csv`` written by :func:`save_split`.

    Raises:
        RunError: the file is missing or malformed.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [Example(r["path"], int(r["label"]), r["split"]) for r in rows]
    except FileNotFoundError:
        raise RunError(f"{path}: missing (is this a catsdogs run folder?)") from None
    except (KeyError, ValueError, csv.Error) as exc:
        raise RunError(f"{path}: malformed splits file ({exc})") from None


def select(examples: list[Example], split: str) -> tuple[list[str], list[int]]:
    """Paths and labels of one split."""
    rows = [e for e in examples if e.split == split]
    return [e.path for e in rows], [e.label for e in rows]
