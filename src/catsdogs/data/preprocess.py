"""Preprocessing: the one resize every photo goes through before the model, in training
(cached by the pipeline), evaluation, ``predict``, ``serve``, Grad-CAM and export checks, so a
photo gets the same pixels, and the same P(dog), everywhere.

Resizing is bilinear with antialiasing, the same operation as the model's own ``Resizing``
layer (:class:`catsdogs.models.Resize`), so a photo resized here and a raw photo resized inside
the model agree.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def resize(images: tf.Tensor | np.ndarray, image_size: int) -> tf.Tensor:
    """Resize to ``image_size`` × ``image_size`` pixels, bilinear with antialiasing.

    Args:
        images: ``(height, width, 3)`` or ``(batch, height, width, 3)``, any real dtype, 0–255.
        image_size: output side in pixels.

    Returns:
        ``float32`` tensor of the same rank with spatial size ``(image_size, image_size)``;
        values stay in 0–255. Identical to ``keras.layers.Resizing(image_size, image_size,
        interpolation="bilinear", antialias=True)``.
    """
    return tf.image.resize(tf.cast(images, tf.float32), (image_size, image_size),
                           method="bilinear", antialias=True)


def resize_uint8(images: tf.Tensor | np.ndarray, image_size: int) -> tf.Tensor:
    """:func:`resize`, then rounded and clipped back to ``uint8``: the exact pixels a model is fed
    for a photo, in training (where they are cached) and in prediction alike."""
    return tf.cast(tf.round(tf.clip_by_value(resize(images, image_size), 0.0, 255.0)), tf.uint8)


# Compiled once per input rank/size class: less per-photo overhead than eager ops, same pixels
# (the graph is the same resize_uint8).
_resize_uint8 = tf.function(resize_uint8, reduce_retracing=True)


def prepare(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resize one decoded photo to the model's input: ``(H, W, 3) uint8`` →
    ``(image_size, image_size, 3) uint8`` (bilinear, antialiased, rounded).

    This is exactly what the training pipeline caches, so training, evaluation, prediction and
    serving all feed the model identical pixels for the same photo.
    """
    return _resize_uint8(image, image_size).numpy()
