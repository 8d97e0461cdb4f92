"""Preprocessing: the one resize every photo goes through (bilinear, antialiased, rounded to
uint8), and the model's own Resize layer, which must agree with it."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from conftest import photo

from catsdogs.data.preprocess import prepare, resize, resize_uint8
from catsdogs.models import build_model


def test_model_resize_matches_pipeline_resize():
    """A raw photo resized inside the model equals the same photo resized by the pipeline."""
    m = build_model("baseline", 64)
    head = keras.Model(m.input, m.get_layer("rescale").output)
    raw = np.random.default_rng(0).integers(0, 256, (1, 90, 70, 3)).astype("float32")
    inside = np.asarray(head(raw))
    outside = np.asarray(resize_uint8(raw, 64), dtype=np.float32) / 255.0
    assert inside.shape == outside.shape == (1, 64, 64, 3)
    assert np.abs(inside - outside).max() <= 0.5 / 255 + 1e-6  # only uint8 rounding differs
    same = np.asarray(head(np.asarray(resize_uint8(raw, 64), np.float32)))
    np.testing.assert_allclose(same, outside, atol=1e-7)  # already-sized input passes unchanged


def test_prepare_is_the_rounded_resize_of_one_photo():
    image = photo(1, (90, 70), seed=2)
    prepared = prepare(image, 32)
    assert prepared.shape == (32, 32, 3) and prepared.dtype == np.uint8
    np.testing.assert_array_equal(prepared, np.asarray(resize_uint8(image, 32)))
    exact = np.asarray(resize(image, 32))
    assert exact.dtype == np.float32 and np.abs(prepared - exact).max() <= 0.5 + 1e-4
    same = keras.layers.Resizing(32, 32, interpolation="bilinear", antialias=True)
    np.testing.assert_allclose(exact, np.asarray(same(tf.cast(image, tf.float32))), atol=1e-3)
    batch = np.asarray(resize_uint8(np.stack([image, image]), 32))
    assert batch.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(batch[1], prepared)
