"""Training-time augmentation, applied per batch in the tf.data pipeline (never at inference).

Each recipe maps ``(batch, h, w, 3) float32`` images in 0–255 to augmented images of the same
shape and dtype. :data:`AUGMENTATIONS` names them for ``config.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import tensorflow as tf
from keras import layers


def tutorial_augmentation(seed: int | None = None) -> keras.Sequential:
    """The tutorial's ``ImageDataGenerator(shear_range=0.2, zoom_range=0.2,
    horizontal_flip=True)`` as Keras 3 preprocessing layers.

    ``zoom_range=0.2`` zooms height and width independently in [0.8, 1.2]. ``shear_range`` is in
    *degrees* in ``ImageDataGenerator`` (``apply_affine_transform`` calls ``np.deg2rad``), so
    0.2 means a shear angle of at most 0.2°, i.e. a shear factor of tan(0.2°) ≈ 0.0035; we
    reproduce that faithfully.
    """
    shear = math.tan(math.radians(0.2))
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomZoom((-0.2, 0.2), (-0.2, 0.2), fill_mode="nearest", seed=seed),
        layers.RandomShear(x_factor=shear, fill_mode="nearest", seed=seed),
    ], name="tutorial_augmentation")


class RandomResizedCropFlip(layers.Layer):
    """Random resized crop plus random horizontal flip, in one ``tf.image.crop_and_resize`` call.

    For each image a box covering ``scale`` of its area with aspect ratio in ``ratio`` (sampled
    log-uniformly) is placed at random and resized back to the input size; half the boxes are
    mirrored (``crop_and_resize`` flips a box whose x1 > x2). This is the "Inception" crop
    (Szegedy et al. 2015, arXiv:1409.4842; ``RandomResizedCrop`` in torchvision/timm) with a
    milder scale range suited to short from-scratch training. One fused op per batch costs a
    small fraction of what chained Keras ``RandomZoom``/``RandomTranslation`` layers do on a CPU.
    At ``scale=(1, 1)`` the box is the whole image: evaluation sees exactly that view.

    Input: ``(batch, h, w, 3) float32``, values 0–255. Output: the same, at ``h × w`` or, after
    :meth:`set_output_size`, at that size (the crop is resized straight to it, which is how
    progressive resizing changes the training size per epoch without re-decoding photos).
    """

    def __init__(self, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3), seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.scale, self.ratio, self.seed = tuple(scale), tuple(ratio), seed
        # Read by the tf.data pipeline at run time; 0 means "the input's own size".
        self._output_size = tf.Variable(0, dtype=tf.int32, trainable=False)

    def set_output_size(self, pixels: int) -> None:
        """Make the crops ``pixels × pixels`` from the next batch the pipeline produces on (0 =
        the input's size)."""
        self._output_size.assign(int(pixels))

    def call(self, images, training=True):
        if not training:
            return images
        shape = tf.shape(images)
        n, h, w = shape[0], shape[1], shape[2]
        area = tf.random.uniform([n], *self.scale, seed=self.seed)
        log_r = tf.random.uniform([n], math.log(self.ratio[0]), math.log(self.ratio[1]),
                                  seed=None if self.seed is None else self.seed + 1)
        r = tf.exp(log_r)  # box width / height, relative to the image's own aspect
        bh = tf.minimum(tf.sqrt(area / r), 1.0)
        bw = tf.minimum(tf.sqrt(area * r), 1.0)
        y1 = tf.random.uniform([n], seed=None if self.seed is None else self.seed + 2) * (1 - bh)
        x1 = tf.random.uniform([n], seed=None if self.seed is None else self.seed + 3) * (1 - bw)
        flip = tf.random.uniform([n], seed=None if self.seed is None else self.seed + 4) < 0.5
        x_left, x_right = tf.where(flip, x1 + bw, x1), tf.where(flip, x1, x1 + bw)
        boxes = tf.stack([y1, x_left, y1 + bh, x_right], axis=1)
        size = tf.where(self._output_size > 0, tf.stack([self._output_size] * 2),
                        tf.stack([h, w]))
        return tf.image.crop_and_resize(images, boxes, tf.range(n), size)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "ratio": self.ratio,
                "seed": self.seed}


def crop_flip_augmentation(seed: int | None = None) -> keras.Layer:
    """Our default recipe: :class:`RandomResizedCropFlip` with area scale 0.4–1."""
    return RandomResizedCropFlip(scale=(0.4, 1.0), seed=seed, name="crop_flip")


def light_crop_flip_augmentation(seed: int | None = None) -> keras.Layer:
    """A milder :class:`RandomResizedCropFlip` (area scale 0.7–1) for short schedules.

    Why: a short run from scratch underfits (training accuracy no higher than validation
    accuracy), and strong augmentation only slows it down; a milder zoom also shrinks the
    train/test object-size gap that FixRes (Touvron et al. 2019, arXiv:1906.06423) corrects.
    The validation-split measurements behind it: docs/recipes.md (``fast``)."""
    return RandomResizedCropFlip(scale=(0.7, 1.0), seed=seed, name="crop_flip")


AUGMENTATIONS: dict[str, Callable[..., keras.Layer]] = {
    "tutorial": tutorial_augmentation,
    "crop_flip": crop_flip_augmentation,
    "light_crop_flip": light_crop_flip_augmentation,
}
"""Augmentation recipes by name, as stored in ``config.json``."""
