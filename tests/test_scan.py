"""Scanning a labelled folder: layouts, labels, bad and hidden files, duplicates, unusable
folders, non-UTF-8 names."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import save_photo

from catsdogs.data.scan import label_from_name, scan_folder
from catsdogs.errors import DataError


@pytest.mark.parametrize("names", [("Cat", "Dog"), ("cats", "dogs"), ("CATS", "Dogs")])
def test_class_folder_layouts(make_folder, names):
    root = make_folder(cats=3, dogs=4, names=names)
    result = scan_folder(root, progress=False)
    assert result.layout == "class-folders"
    assert result.counts() == {"cat": 3, "dog": 4}
    for p in result.photos:
        assert p.label == (0 if os.sep + names[0] + os.sep in p.path else 1)


def test_flat_kaggle_layout(make_folder, tmp_path):
    root = make_folder(cats=2, dogs=3, layout="flat")
    (root / "README.txt").write_text("not a photo")
    result = scan_folder(root, progress=False)
    assert result.layout == "file-names"
    assert result.counts() == {"cat": 2, "dog": 3}
    assert [os.path.basename(s.path) for s in result.skipped] == ["README.txt"]
    assert "no label" in result.skipped[0].reason


def test_label_from_name():
    assert label_from_name("cat.12.jpg") == 0
    assert label_from_name("Dog.7.png") == 1
    assert label_from_name("catalog.jpg") is None
    assert label_from_name("dog") is None


def test_bad_and_hidden_files_are_reported_with_reasons(make_folder):
    root = make_folder(cats=3, dogs=3)
    (root / "Cat" / "empty.jpg").write_bytes(b"")
    (root / "Cat" / "Thumbs.db").write_bytes(b"\0" * 100)
    (root / "Dog" / ".DS_Store").write_bytes(b"\0" * 100)
    (root / "Dog" / "notes.jpg").write_text("text, not a photo")
    good = (root / "Dog" / "0.jpg").read_bytes()
    (root / "Dog" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "Dog" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    result = scan_folder(root, progress=False)
    reasons = {os.path.basename(s.path): s.reason for s in result.skipped}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["Thumbs.db"] == reasons[".DS_Store"] == "hidden or system file"
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated" in reasons["cut.jpg"]
    assert reasons["dangling.jpg"] == "broken symbolic link"
    assert result.counts() == {"cat": 3, "dog": 3}
    report = result.to_dict()
    assert report["n_skipped"] == 6 and report["usable"] is True
    json.dumps(report)


def test_symlink_loop_folder_is_not_followed(make_folder):
    root = make_folder(cats=2, dogs=2)
    (root / "Cat" / "again").symlink_to(root / "Cat", target_is_directory=True)
    result = scan_folder(root, progress=False)
    assert result.counts() == {"cat": 2, "dog": 2}
    assert any("not followed" in s.reason for s in result.skipped)


def test_duplicates_removed_and_cross_class_dropped(make_folder):
    root = make_folder(cats=4, dogs=4)
    shutil.copy(root / "Cat" / "0.jpg", root / "Cat" / "copy-of-0.jpg")
    shutil.copy(root / "Cat" / "1.jpg", root / "Dog" / "mislabelled.jpg")
    result = scan_folder(root, progress=False)
    assert len(result.duplicate_groups) == 2
    assert len(result.cross_class_groups()) == 1
    kept = {os.path.relpath(p.path, root) for p in result.deduplicated()}
    assert os.path.join("Cat", "0.jpg") in kept and os.path.join("Cat", "copy-of-0.jpg") not in kept
    assert os.path.join("Cat", "1.jpg") not in kept  # the cross-class pair goes entirely
    assert os.path.join("Dog", "mislabelled.jpg") not in kept
    assert result.counts(result.deduplicated()) == {"cat": 3, "dog": 4}


def test_unusable_folders(make_folder, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        scan_folder(tmp_path / "nope", progress=False)
    one = make_folder(cats=3, dogs=0, root=tmp_path / "one")
    (one / "Dog").mkdir()  # an empty class folder
    with pytest.raises(DataError, match="only one class"):
        scan_folder(one, progress=False).check_usable()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no readable photos"):
        scan_folder(empty, progress=False).check_usable()


def test_non_utf8_names_are_scanned_and_reported(make_folder):
    root = make_folder(cats=2, dogs=2)
    raw = os.path.join(os.fsencode(root / "Cat"), b"f\xe9lix.jpg")
    shutil.copy(root / "Cat" / "0.jpg", os.fsdecode(raw))
    with open(os.path.join(os.fsencode(root / "Dog"), b"bad-\xff.jpg"), "wb") as fh:
        fh.write(b"junk")
    result = scan_folder(root, progress=False)
    assert any(os.fsencode(p.path) == raw for p in result.photos)
    text = json.dumps(result.to_dict())
    assert "bad-\\\\xff.jpg" in text


def test_save_photo_helper_makes_distinct_files(tmp_path):
    a = save_photo(tmp_path / "a.png", 0, seed=1)
    b = save_photo(tmp_path / "b.png", 0, seed=2)
    assert a.read_bytes() != b.read_bytes()
