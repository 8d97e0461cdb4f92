"""The tf.data pipeline: batch shapes and dtypes, photos the scan kept resized instead of
decoded again, deterministic datasets without the autotuner."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import save_photo

from catsdogs.data.pipeline import ResizedPhotos, make_dataset
from catsdogs.data.scan import scan_folder


def test_dataset_shapes_and_dtypes(tmp_path):
    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=i, size=(50 + i, 40))) for i in
             range(5)]
    ds = make_dataset(paths, [0, 1, 0, 1, 0], 32, batch_size=2)
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [2, 2, 1]
    x, y = batches[0]
    assert x.shape == (2, 32, 32, 3) and x.dtype.name == "float32"
    assert y.shape == (2, 1) and y.dtype.name == "float32"
    assert 0 <= float(np.min(x)) and float(np.max(x)) <= 255
    assert float(np.max(x)) == float(np.round(np.max(x)))  # cached as uint8 pixels
    images_only = make_dataset(paths, None, 32, batch_size=5)
    assert next(iter(images_only)).shape == (5, 32, 32, 3)


@pytest.mark.parametrize("batch_size, max_pending_bytes", [(3, 2**30), (64, 0)])
def test_scan_keeps_each_photo_resized_exactly_as_the_pipeline_would(make_folder, batch_size,
                                                                     max_pending_bytes):
    """Decode once: the arrays the scan keeps, fed to ``make_dataset``, give the same batches
    (same pixels, same seeded shuffle, epoch after epoch) as decoding the files there, whether
    photos are resized in batches (of 3 here) or one by one (the byte limit reached)."""
    root = make_folder(cats=5, dogs=4)
    save_photo(root / "Dog" / "wide.png", 1, seed=9, size=(70, 33))
    (root / "Cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    resized = ResizedPhotos(24, batch_size=batch_size, max_pending_bytes=max_pending_bytes)
    result = scan_folder(root, progress=False, keep=resized)
    kept = resized.finish()
    assert len(result.photos) == 10 and len(result.skipped) == 1
    assert set(kept) == {p.path for p in result.photos}  # the broken file is not kept
    paths, labels = [p.path for p in result.photos], [p.label for p in result.photos]
    images = np.stack([kept[p] for p in paths])
    assert images.shape == (10, 24, 24, 3) and images.dtype == np.uint8
    for shuffle in (False, True):
        decoded = make_dataset(paths, labels, 24, 4, shuffle=shuffle, seed=5)
        kept = make_dataset(paths, labels, 24, 4, shuffle=shuffle, seed=5, images=images)
        for _ in range(2):
            for (xa, ya), (xb, yb) in zip(decoded, kept, strict=True):
                np.testing.assert_array_equal(xa.numpy(), xb.numpy())
                np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    with pytest.raises(ValueError, match=r"expected \(10, 32, 32, 3\) uint8"):
        make_dataset(paths, labels, 32, 4, images=images)


def test_datasets_run_without_the_tf_data_autotuner(tmp_path):
    """Regression guard: with autotuning on, Keras' per-epoch iterator teardown waited for
    tf.data's autotune thread (idle stalls of 5–35 s per epoch; see ``pipeline_options``)."""
    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=i)) for i in range(3)]
    labelled = make_dataset(paths, [0, 1, 0], 16, batch_size=2, shuffle=True)
    images_only = make_dataset(paths, None, 16, batch_size=2, cache=False)
    for ds in (labelled, images_only):
        assert ds.options().autotune.enabled is False
        assert ds.options().deterministic is True
    # and they still run: every photo comes out once, in batches of 2
    assert [tuple(x.shape) for x, _ in labelled] == [(2, 16, 16, 3), (1, 16, 16, 3)]
    assert [tuple(x.shape) for x in images_only] == [(2, 16, 16, 3), (1, 16, 16, 3)]

