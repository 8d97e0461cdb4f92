"""Augmentations: random-resized-crop-and-flip output sizes (progressive resizing) and crop
areas."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from conftest import save_photo

from catsdogs.augment import AUGMENTATIONS, crop_flip_augmentation
from catsdogs.data.pipeline import make_dataset


def test_crop_flip_changes_size_between_epochs_of_one_pipeline(tmp_path):
    """Progressive resizing: the same dataset yields the size set before each pass."""
    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=i)) for i in range(6)]
    augment = crop_flip_augmentation(seed=1)
    ds = make_dataset(paths, [0, 1] * 3, 40, batch_size=4, shuffle=True, augment=augment)
    assert {tuple(x.shape[1:3]) for x, _ in ds} == {(40, 40)}
    augment.set_output_size(24)
    assert {tuple(x.shape[1:3]) for x, _ in ds} == {(24, 24)}
    augment.set_output_size(0)
    assert {tuple(x.shape[1:3]) for x, _ in ds} == {(40, 40)}


def test_light_crop_keeps_at_least_70_percent_of_the_area():
    """Crops of ``light_crop_flip`` cover ≥ 0.7 of the area with aspect 3/4–4/3, so each side
    spans ≥ √(0.7 · 3/4) ≈ 0.72 of the photo; ``crop_flip`` (0.4–1) goes below that. Read off
    images whose pixel value is the column (or row) index."""
    n, side = 256, 33
    ramp = np.arange(side, dtype=np.float32)
    cols = np.broadcast_to(ramp[None, None, :, None], (n, side, side, 3))
    rows = np.broadcast_to(ramp[None, :, None, None], (n, side, side, 3))

    def spans(name, images):
        out = AUGMENTATIONS[name](seed=3)(tf.constant(images), training=True).numpy()[..., 0]
        return (out.max(axis=(1, 2)) - out.min(axis=(1, 2))) / (side - 1)

    for images in (cols, rows):
        light = spans("light_crop_flip", images)
        assert light.min() >= np.sqrt(0.7 * 3 / 4) - 1e-3 and light.max() <= 1 + 1e-5
        assert spans("crop_flip", images).min() < 0.68

