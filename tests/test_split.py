"""The train/val/test split: stratified, seeded, disjoint, free of duplicate content."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from catsdogs.data.scan import scan_folder
from catsdogs.data.split import load_split, make_split, save_split, select
from catsdogs.errors import DataError, RunError


def _photos(make_folder, n):
    return scan_folder(make_folder(cats=n, dogs=n), progress=False).deduplicated()


def test_split_is_stratified_seeded_and_disjoint(make_folder, tmp_path):
    photos = _photos(make_folder, 30)
    a = make_split(photos, seed=7)
    b = make_split(photos, seed=7)
    c = make_split(photos, seed=8)
    assert a == b and a != c
    by_split = {s: [e for e in a if e.split == s] for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in by_split.items()} == {"train": 48, "val": 6, "test": 6}
    for rows in by_split.values():
        assert Counter(e.label for e in rows)[0] == Counter(e.label for e in rows)[1]
    paths = [e.path for e in a]
    assert len(paths) == len(set(paths)) == 60
    save_split(a, tmp_path / "splits.csv")
    assert load_split(tmp_path / "splits.csv") == a
    val_paths, val_labels = select(a, "val")
    assert val_paths == [e.path for e in by_split["val"]]
    assert val_labels == [e.label for e in by_split["val"]]


def test_a_missing_or_malformed_splits_file_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="missing"):
        load_split(tmp_path / "nope.csv")
    bad = tmp_path / "splits.csv"
    bad.write_text("path,label\nx.jpg,cat\n")
    with pytest.raises(RunError, match="malformed splits file"):
        load_split(bad)


def test_split_needs_enough_photos(make_folder):
    with pytest.raises(DataError, match="too few photos"):
        make_split(_photos(make_folder, 2), seed=0)


def test_split_holds_no_duplicate_content(make_folder, tmp_path):
    root = make_folder(cats=20, dogs=20)
    for i in range(5):
        shutil.copy(root / "Dog" / f"{i}.jpg", root / "Dog" / f"dup{i}.jpg")
    result = scan_folder(root, progress=False)
    split = make_split(result.deduplicated(), seed=0)
    digest = {p.path: p.sha256 for p in result.photos}
    hashes = Counter(digest[e.path] for e in split)
    assert max(hashes.values()) == 1
