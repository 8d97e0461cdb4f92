"""--cache disk: records files (atomic writes, random reads)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import catsdogs.data.pipeline as pipeline
from catsdogs.data.records import (
    OnDisk,
    PhotoStore,
    Records,
    RecordWriter,
    read_manifest,
    remove_partial,
    write_manifest,
)


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_records_are_written_atomically_and_read_in_any_order(tmp_path):
    file = str(tmp_path / "cache" / "photos-8px.u8")
    photos = images(5, 8)
    with RecordWriter(file, 8) as writer:
        assert writer.append(photos[:3]) == 0 and writer.append(photos[3:]) == 3
        assert not os.path.exists(file)  # under a temporary name until complete
    records = Records(file, 8)
    assert len(records) == 5 and os.listdir(tmp_path / "cache") == ["photos-8px.u8"]
    np.testing.assert_array_equal(records.read([4, 0, 4, 2]), photos[[4, 0, 4, 2]])
    assert records.read([]).shape == (0, 8, 8, 3)
    with pytest.raises(IndexError):
        records.read([5])
    with pytest.raises(ValueError, match="expected"):
        RecordWriter(str(tmp_path / "x.u8"), 8).append(images(1, 9))
    # A write that fails leaves no file under the final name and no temporary file.
    with pytest.raises(RuntimeError), RecordWriter(file, 8) as writer:
        writer.append(images(2, 8, seed=1))
        raise RuntimeError("killed")
    np.testing.assert_array_equal(Records(file, 8).read([0]), photos[:1])  # old one intact
    assert os.listdir(tmp_path / "cache") == ["photos-8px.u8"]
    # What a kill -9 leaves: a temporary file, removed by remove_partial.
    RecordWriter(file, 8).append(images(1, 8))
    assert len(os.listdir(tmp_path / "cache")) == 2
    assert len(remove_partial(str(tmp_path / "cache"))) == 1
    assert os.listdir(tmp_path / "cache") == ["photos-8px.u8"]


def test_a_store_is_complete_or_not_used(tmp_path):
    file, manifest = str(tmp_path / "p.u8"), str(tmp_path / "p.csv")
    assert PhotoStore.open(file, manifest, 8) == (None, "not built yet")
    with RecordWriter(file, 8) as writer:
        writer.append(images(3, 8))
    keys = ["/a,b.jpg", "/new\nline.jpg", "/caf\udce9.jpg"]  # CSV quoting, odd bytes
    write_manifest(manifest, keys)
    assert read_manifest(manifest) == keys
    store, _ = PhotoStore.open(file, manifest, 8)
    assert store.missing(["/x.jpg", *keys]) == ["/x.jpg"]
    np.testing.assert_array_equal(store.select(keys[::-1]).index, [2, 1, 0])
    with open(file, "r+b") as fh:  # half a record lost
        fh.truncate(2 * 8 * 8 * 3 + 10)
    store, why = PhotoStore.open(file, manifest, 8)
    assert store is None and "not a whole number" in why
    with open(file, "r+b") as fh:  # a whole record lost
        fh.truncate(2 * 8 * 8 * 3)
    store, why = PhotoStore.open(file, manifest, 8)
    assert store is None and "2 records for 3 keys" in why


def test_make_dataset_rejects_photos_on_disk_that_do_not_fit(tmp_path):
    file = str(tmp_path / "p.u8")
    with RecordWriter(file, 8) as writer:
        writer.append(images(4, 8))
    on_disk = OnDisk(Records(file, 8), np.arange(3))
    with pytest.raises(ValueError, match="expected 2 photos of 8 px on disk, got 3"):
        pipeline.make_dataset(["a", "b"], [0, 1], 8, 2, images=on_disk)
    with pytest.raises(ValueError, match="expected 3 photos of 16 px on disk, got 3 of 8"):
        pipeline.make_dataset(["a", "b", "c"], [0, 1, 0], 16, 2, images=on_disk)
    with pytest.raises(ValueError, match="outliers: expected photos on disk"):
        pipeline.make_dataset(["a", "b", "c"], [0, 1, 0], 8, 2, images=on_disk,
                              outliers=images(1, 8), outlier_target=[0.5])
