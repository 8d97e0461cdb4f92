"""Other (non-pet) photos: scanning by kind, the held-out kind, the split file, and synthetic
outliers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from catsdogs.data.outliers import (
    SYNTHETIC_KINDS,
    UNSEEN_SYNTHETIC,
    default_holdout,
    load_other_split,
    save_other_split,
    scan_other,
    split_other,
    synthetic_outliers,
)
from catsdogs.errors import DataError


def make_other(root, kinds=("flowers/daisy", "flowers/roses", "cars"), n=12):
    for k, kind in enumerate(kinds):
        for i in range(n):
            path = root / kind / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(k % 2, seed=100 * k + i)).save(path)
    return root


def test_scan_names_kinds_skips_bad_files_and_drops_duplicates(tmp_path):
    root = make_other(tmp_path / "other")
    (root / "cars" / "broken.jpg").write_bytes(b"not a photo")
    (root / "cars" / "copy.png").write_bytes((root / "cars" / "0.png").read_bytes())
    kept = {}
    photos, skipped = scan_other(root, keep=lambda p, px: kept.setdefault(p, px.shape),
                                 progress=False)
    assert sorted({p.kind for p in photos}) == ["cars", "flowers/daisy", "flowers/roses"]
    assert len(photos) == 36  # the copy is a duplicate
    assert [s.path.endswith("broken.jpg") for s in skipped] == [True]
    assert len(kept) == 37 and all(shape == (40, 48, 3) for shape in kept.values())


def test_scan_of_a_missing_or_empty_folder_fails(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        scan_other(tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable photos"):
        scan_other(tmp_path / "empty", progress=False)


def test_split_holds_one_kind_out_and_shares_no_photo(tmp_path):
    photos, _ = scan_other(make_other(tmp_path / "other"), progress=False)
    assert default_holdout(photos) == "flowers/roses"
    examples = split_other(photos, seed=1, holdout="flowers/roses")
    by_split = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test",
                                                                   "unseen")}
    assert {e.kind for e in by_split["unseen"]} == {"flowers/roses"}
    assert len(by_split["unseen"]) == 12
    assert not any(e.kind == "flowers/roses" for s in ("train", "val", "test")
                   for e in by_split[s])
    assert len({e.path for e in examples}) == len(examples) == 36
    assert split_other(photos, seed=1, holdout="flowers/roses") == examples  # seeded
    file = str(tmp_path / "other.csv")
    save_other_split(examples, file)
    assert load_other_split(file) == examples
    assert load_other_split(str(tmp_path / "missing.csv")) == []
    with pytest.raises(DataError, match="held-out kind"):
        split_other(photos, seed=1, holdout="boats")


def test_synthetic_outliers_are_seeded_and_varied():
    a = synthetic_outliers(14, 32, seed=3)
    assert a.shape == (14, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, synthetic_outliers(14, 32, seed=3))
    assert not np.array_equal(a, synthetic_outliers(14, 32, seed=4))
    assert len({img.tobytes() for img in a}) == 14
    text = synthetic_outliers(2, 64, seed=0, kinds=(UNSEEN_SYNTHETIC,))
    assert text.std() > 0  # something was drawn
    assert UNSEEN_SYNTHETIC in SYNTHETIC_KINDS
    with pytest.raises(ValueError):
        synthetic_outliers(1, 8, seed=0, kinds=("nonsense",))
