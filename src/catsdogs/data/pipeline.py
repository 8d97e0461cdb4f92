"""tf.data input pipelines: decode once (Pillow), resize, cache, shuffle, batch, augment, prefetch.

Follows the TensorFlow guide "Better performance with the tf.data API"
(https://www.tensorflow.org/guide/data_performance): parallel ``map`` for decoding, ``cache`` after
the expensive decode so each photo is decoded once per run, ``prefetch`` to overlap input and
training. Cached images are stored as ``uint8`` at the model's input size (a 20k-photo train
split at 128 px is ~1 GB of RAM). Training goes one step further: the scan, which must decode
every photo anyway to validate it, keeps each one resized (:class:`ResizedPhotos`), and
:func:`make_dataset` takes those arrays (``images=``) instead of decoding the files again.

The pipeline runs with tf.data's autotuner switched off and fixed parallelism (one ``map`` call
per CPU core, two batches prefetched); see :func:`pipeline_options` for why.

Resizing uses :func:`resize`, the same operation as the model's own ``Resizing`` layer (bilinear,
antialiased), so a photo resized here and a raw photo resized inside the model agree.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import tensorflow as tf

from catsdogs.data.images import load_image

PREFETCH_BATCHES = 2
"""Batches prepared ahead of the model (``Dataset.prefetch``)."""


def parallel_calls() -> int:
    """Parallel ``map`` calls: the CPU cores this process may run on (``os.sched_getaffinity``
    where the OS has it, as on Linux; else ``os.cpu_count()``, as on macOS and Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def pipeline_options() -> tf.data.Options:
    """``tf.data.Options`` for every catsdogs dataset: autotuning off, deterministic order.

    Why no autotuning: with ``AUTOTUNE``, each iterator runs a model thread that re-tunes
    after waits that double up to a minute (``Model::OptimizeLoop`` in TensorFlow's
    ``core/framework/model.cc``). Keras creates a new iterator every epoch, and destroying the
    previous one waited for that thread, so training sat idle for 5–35 s at the start of most
    epochs (2-core CPU, TensorFlow 2.21: 0 % CPU, main thread blocked in
    ``RootDataset::Iterator::~Iterator``; seen with ``gdb``). A standalone tf.data loop with
    iterators as long-lived did not stall, so the trigger inside TensorFlow is not pinned down;
    switching autotuning off removed every stall in the same training run. Fixed parallelism
    is enough here: decoding runs once per run (the cache), and with these settings the
    benchmark's decode-and-resize pipeline ran 1,320 photos/s, 3.9× the ``default`` preset's
    training rate (README, "Measured results").
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


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


class ResizedPhotos:
    """Collects photos resized to ``image_size`` as they are decoded: the decode-once cache.

    Call it as ``resized(path, pixels)`` (``(height, width, 3) uint8``) from any number of
    threads; it is the ``keep`` that training passes to
    :func:`catsdogs.data.scan.scan_folder`. Photos of equal shape are resized together, up to
    ``batch_size`` at a time, with :func:`resize_uint8` (per photo the same pixels as
    :func:`load_resized`; a test checks this): one batched call here cost 0.35 ms per 180×180
    photo against 0.68 ms for one call per photo (2-core CPU). The resize runs in TensorFlow's
    own threads without the GIL, alongside the scan's Pillow decoding. At most about
    ``max_pending_bytes`` of full-size pixels wait for a batch (larger photos are resized at
    once).

    Args:
        image_size: output side, pixels.
        batch_size: photos of one shape resized per call.
        max_pending_bytes: bytes of decoded photos held while waiting for a full batch.
    """

    def __init__(self, image_size: int, batch_size: int = 64,
                 max_pending_bytes: int = 64 * 2**20):
        self.image_size, self.batch_size = image_size, batch_size
        self.max_pending_bytes = max_pending_bytes
        self._resize = tf.function(lambda x: resize_uint8(x, image_size),
                                   input_signature=[tf.TensorSpec([None, None, None, 3],
                                                                  tf.uint8)])
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
        self._pending_bytes = 0
        self._done: dict[str, np.ndarray] = {}

    def __call__(self, path: str, pixels: np.ndarray) -> None:
        with self._lock:
            group = self._pending.setdefault(pixels.shape, [])
            group.append((path, pixels))
            self._pending_bytes += pixels.nbytes
            ready = None
            if len(group) >= self.batch_size or self._pending_bytes > self.max_pending_bytes:
                ready = self._pending.pop(pixels.shape)
                self._pending_bytes -= sum(p.nbytes for _, p in ready)
        if ready:
            self._run(ready)

    def _run(self, items: list[tuple[str, np.ndarray]]) -> None:
        out = self._resize(np.stack([p for _, p in items])).numpy()
        with self._lock:
            self._done.update(zip((path for path, _ in items), out, strict=True))

    def finish(self) -> dict[str, np.ndarray]:
        """Resize what still waits; return path → ``(image_size, image_size, 3) uint8``."""
        with self._lock:
            groups = list(self._pending.values())
            self._pending.clear()
            self._pending_bytes = 0
        for items in groups:
            self._run(items)
        return self._done


def _decode_path(path: bytes) -> np.ndarray:
    return load_image(os.fsdecode(path))


def load_resized(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode one file (by path) and resize it: ``(image_size, image_size, 3) uint8``.

    Raises (when the dataset is iterated): ``tf.errors.InvalidArgumentError`` wrapping the
    :class:`catsdogs.errors.ImageError` message, for a file that became unreadable after the scan.
    """
    image = tf.numpy_function(_decode_path, [path], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return resize_uint8(image, image_size)


def make_dataset(paths: list[str], labels: list[int] | None, image_size: int, batch_size: int,
                 *, shuffle: bool = False, augment: tf.keras.layers.Layer | None = None,
                 seed: int = 0, cache: bool = True,
                 images: np.ndarray | None = None) -> tf.data.Dataset:
    """Build a batched dataset of images (and labels).

    Args:
        paths: image file paths (already validated by the scan).
        labels: 0 = cat, 1 = dog, or ``None`` for images only.
        image_size: model input side in pixels.
        batch_size: photos per batch.
        shuffle: reshuffle every epoch (training only), seeded by ``seed``.
        augment: a Keras layer (e.g. ``keras.Sequential`` of random layers) applied per batch.
        cache: keep decoded images in memory after the first pass.
        images: the same photos already decoded and resized, ``(len(paths), image_size,
            image_size, 3) uint8`` in the order of ``paths`` (as :class:`ResizedPhotos` makes
            them);
            then no file is read and the dataset holds them in memory (``cache`` is moot).

    Returns:
        Dataset of ``images`` or ``(images, labels)``: images ``(batch, image_size, image_size,
        3) float32`` in 0–255, labels ``(batch, 1) float32``. The same elements, in the same
        order, with ``images`` as without.

    Raises:
        ValueError: ``images`` has the wrong shape or dtype.
    """
    calls = parallel_calls()
    if images is not None:
        expected = (len(paths), image_size, image_size, 3)
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(f"images: expected {expected} uint8, got {images.shape} "
                             f"{images.dtype}")
        ds = tf.data.Dataset.from_tensor_slices(images)
        cache = False
    else:
        encoded = tf.constant([os.fsencode(p) for p in paths], dtype=tf.string)
        ds = tf.data.Dataset.from_tensor_slices(encoded)
        ds = ds.map(lambda p: load_resized(p, image_size), num_parallel_calls=calls)
    if labels is not None:
        y = tf.data.Dataset.from_tensor_slices(np.asarray(labels, np.float32).reshape(-1, 1))
        ds = tf.data.Dataset.zip((ds, y))
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def to_float(x):
        x = tf.cast(x, tf.float32)
        return augment(x, training=True) if augment is not None else x

    if labels is not None:
        ds = ds.map(lambda x, y: (to_float(x), y), num_parallel_calls=calls)
    else:
        ds = ds.map(to_float, num_parallel_calls=calls)
    return ds.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())
