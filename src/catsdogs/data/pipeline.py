"""tf.data input pipelines: decode once (Pillow), resize, cache, shuffle, batch, augment, prefetch.

Follows the TensorFlow guide "Better performance with the tf.data API"
(https://www.tensorflow.org/guide/data_performance): parallel ``map`` for decoding, ``cache`` after
the expensive decode so each photo is decoded once per run, ``prefetch`` to overlap input and
training. Cached images are stored as ``uint8`` at the model's input size (a 20k-photo train
split at 128 px is ~1 GB of RAM). Training goes one step further: the scan, which must decode
every photo anyway to validate it, keeps each one resized (:class:`ResizedPhotos`), and
:func:`make_dataset` takes those arrays (``images=``) instead of decoding the files again.

A photo folder larger than memory (``--cache disk``) takes the same route with the resized
photos on disk: the scan appends them to a records file (:class:`StoredPhotos`,
:mod:`catsdogs.data.records`) and :func:`make_dataset` shuffles record positions and reads each
batch's records, so training sees the same photos in the same order as from memory.

The pipeline runs with tf.data's autotuner switched off and fixed parallelism (one ``map`` call
per CPU core, two batches prefetched); see :func:`pipeline_options` for why.

Resizing is :func:`catsdogs.data.preprocess.resize_uint8`, the same code predict and serve use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from catsdogs.data.images import load_image
from catsdogs.data.preprocess import resize_uint8
from catsdogs.data.records import OnDisk, RecordWriter
from catsdogs.errors import DataError

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
    previous one waited for that thread, so training sat idle for seconds at the start of most
    epochs (main thread blocked in ``RootDataset::Iterator::~Iterator``). Fixed parallelism is
    enough: decoding runs once per run (the cache). Measurements: docs/recipes.md.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


class ResizedPhotos:
    """Collects photos resized to ``image_size`` as they are decoded: the decode-once cache.

    Call it as ``resized(path, pixels)`` (``(height, width, 3) uint8``) from any number of
    threads; it is the ``keep`` that training passes to
    :func:`catsdogs.data.scan.scan_folder`. Photos of equal shape are resized together, up to
    ``batch_size`` at a time, with :func:`resize_uint8` (per photo the same pixels as
    :func:`load_resized`; a test checks this): one batched call costs about half as much per
    photo as one call per photo. The resize runs in TensorFlow's
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
            self._store([path for path, _ in items], out)

    def _store(self, paths: list[str], images: np.ndarray) -> None:
        """Keep resized ``images`` (``(k, size, size, 3) uint8``) of ``paths``; called with
        the lock held."""
        self._done.update(zip(paths, images, strict=True))

    def finish(self) -> dict[str, np.ndarray]:
        """Resize what still waits; return path → ``(image_size, image_size, 3) uint8``."""
        with self._lock:
            groups = list(self._pending.values())
            self._pending.clear()
            self._pending_bytes = 0
        for items in groups:
            self._run(items)
        return self._done


class StoredPhotos(ResizedPhotos):
    """The decode-once keep of ``--cache disk``: like :class:`ResizedPhotos`, but each resized
    photo is appended to ``writer`` (a :class:`catsdogs.data.records.RecordWriter`) instead of
    being held in memory; :attr:`keys` lists the photos' paths in record order.

    Memory stays bounded whatever the number of photos: at most about ``max_pending_bytes`` of
    decoded photos waiting for a batch, one resized batch, and the list of paths.
    """

    def __init__(self, writer: RecordWriter, batch_size: int = 64,
                 max_pending_bytes: int = 64 * 2**20):
        super().__init__(writer.size, batch_size, max_pending_bytes)
        self.writer = writer
        self.keys: list[str] = []

    def _store(self, paths: list[str], images: np.ndarray) -> None:
        self.writer.append(images)
        self.keys += paths

    def finish(self) -> dict[str, np.ndarray]:
        """Write what still waits; return ``{}`` (no photo is held in memory: they are all in
        :attr:`writer`, named by :attr:`keys`)."""
        super().finish()
        return {}


def write_decoded(writer: RecordWriter, paths: list[str]) -> None:
    """Decode ``paths`` with :func:`load_resized` (parallel ``map``, in order) and append them
    to ``writer`` at its size, a batch at a time: memory stays bounded.

    Raises:
        DataError: a file became unreadable since the scan.
    """
    if not paths:
        return
    encoded = tf.constant([os.fsencode(p) for p in paths], dtype=tf.string)
    ds = (tf.data.Dataset.from_tensor_slices(encoded)
          .map(lambda p: load_resized(p, writer.size), num_parallel_calls=parallel_calls())
          .batch(64).prefetch(PREFETCH_BATCHES).with_options(pipeline_options()))
    try:
        for batch in ds:
            writer.append(batch.numpy())
    except tf.errors.InvalidArgumentError as exc:
        raise DataError(f"cannot decode a photo again: {exc.message.splitlines()[0]}") from None


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


def _photos(paths: list[str], image_size: int, images: np.ndarray | None, cache: bool,
            calls: int) -> tuple[tf.data.Dataset, bool]:
    """Unbatched ``(image_size, image_size, 3) uint8`` photos: from ``images`` when given
    (then nothing is cached again), else decoded from ``paths``; and whether to cache them."""
    if images is None:
        encoded = tf.constant([os.fsencode(p) for p in paths], dtype=tf.string)
        ds = tf.data.Dataset.from_tensor_slices(encoded)
        return ds.map(lambda p: load_resized(p, image_size), num_parallel_calls=calls), cache
    expected = (len(paths), image_size, image_size, 3)
    if images.shape != expected or images.dtype != np.uint8:
        raise ValueError(f"images: expected {expected} uint8, got {images.shape} "
                         f"{images.dtype}")
    return tf.data.Dataset.from_tensor_slices(images), False


def _with_outliers(ds: tf.data.Dataset, outliers: np.ndarray, image_size: int,
                   target) -> tf.data.Dataset:
    """The ``(image, label)`` elements, then the outliers with label ``target``."""
    expected = (image_size, image_size, 3)
    if not isinstance(outliers, np.ndarray) or outliers.shape[1:] != expected \
            or outliers.dtype != np.uint8:
        raise ValueError(f"outliers: expected (m, {image_size}, {image_size}, 3) uint8, got "
                         f"{getattr(outliers, 'shape', type(outliers).__name__)} "
                         f"{getattr(outliers, 'dtype', '')}")
    extra = tf.data.Dataset.from_tensor_slices(
        (outliers, np.repeat(_target_row(target), len(outliers), axis=0)))
    return ds.concatenate(extra)


def _target_row(target) -> np.ndarray:
    """The outliers' label row as ``(1, k) float32``."""
    return np.asarray(target, np.float32).reshape(1, -1)


def _in_memory(paths: list[str], rows: np.ndarray | None, image_size: int,
               images: np.ndarray | None, cache: bool, outliers: np.ndarray | None,
               target) -> tf.data.Dataset:
    """Unbatched ``(photo, label row)`` elements (``photo`` alone without ``rows``): the
    photos from ``images`` or decoded from ``paths`` (then cached in memory with ``cache``),
    followed by the outliers."""
    ds, cache = _photos(paths, image_size, images, cache, parallel_calls())
    if rows is not None:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(rows)))
    if cache:
        ds = ds.cache()
    return ds if outliers is None else _with_outliers(ds, outliers, image_size, target)


def _on_disk(paths: list[str], rows: np.ndarray | None, image_size: int, images: OnDisk,
             outliers: OnDisk | None, target) -> tuple[tf.data.Dataset, Callable]:
    """Unbatched ``int64`` positions into the photos, ``images`` then the outliers, and the
    function that turns a batch of positions into their photos (read from disk) and label
    rows. Only positions pass through the shuffle buffer (about 200 bytes of tf.data element
    per photo, against 350 with the label row alongside), so memory grows by 0.2 GB per
    million photos, against 49 GB for the photos themselves at 128 px.

    Raises:
        ValueError: records of another size, a count that does not match ``paths``, or
            outliers that are not on disk in the same records file.
    """
    if images.records.size != image_size or len(images) != len(paths):
        raise ValueError(f"images: expected {len(paths)} photos of {image_size} px on disk, "
                         f"got {len(images)} of {images.records.size} px")
    if outliers is not None:
        if not isinstance(outliers, OnDisk) or outliers.records.path != images.records.path:
            raise ValueError("outliers: expected photos on disk in the images' records file")
        images = OnDisk(images.records, np.concatenate([images.index, outliers.index]))
        rows = np.concatenate([rows, np.repeat(_target_row(target), len(outliers), axis=0)])
    table = None if rows is None else tf.constant(rows)

    def fetch(positions):
        photos = _read_batch(images, positions)
        return photos if table is None else (photos, tf.gather(table, positions))

    return tf.data.Dataset.range(len(images)), fetch


def _read_batch(source: OnDisk, positions: tf.Tensor) -> tf.Tensor:
    """The photos at a batch of ``positions`` (``(b,) int64``), read from disk (``os.pread``
    in :meth:`catsdogs.data.records.Records.read`): ``(b, size, size, 3) uint8``."""
    size = source.records.size
    images = tf.numpy_function(source.read, [positions], tf.uint8, stateful=False)
    images.set_shape([None, size, size, 3])
    return images


def make_dataset(paths: list[str], labels: list[int] | None, image_size: int, batch_size: int,
                 *, shuffle: bool = False, augment: tf.keras.layers.Layer | None = None,
                 seed: int = 0, cache: bool = True, images: np.ndarray | OnDisk | None = None,
                 outliers: np.ndarray | OnDisk | None = None,
                 outlier_target=None) -> tf.data.Dataset:
    """Build a batched dataset of images (and labels).

    Args:
        paths: image file paths (already validated by the scan).
        labels: ``(n,)`` 0 = cat, 1 = dog, or ``(n, k)`` rows of targets (training with a pet
            head: ``[label, 1]``), or ``None`` for images only.
        image_size: model input side in pixels.
        batch_size: photos per batch.
        shuffle: reshuffle every epoch (training only), seeded by ``seed``.
        augment: a Keras layer (e.g. ``keras.Sequential`` of random layers) applied per batch.
        cache: keep decoded images in memory after the first pass.
        images: the same photos already decoded and resized, in the order of ``paths``: in
            memory, ``(len(paths), image_size, image_size, 3) uint8`` (as
            :class:`ResizedPhotos` makes them), or on disk (``--cache disk``), an
            :class:`OnDisk` of ``len(paths)`` records of ``image_size`` px, whose positions
            the dataset shuffles before it reads each batch's records. No file is then read
            and ``cache`` is moot.
        outliers: non-pet images mixed into a labelled dataset (before shuffling), each with
            the label row ``outlier_target``: ``(m, image_size, image_size, 3) uint8`` with
            photos in memory, an :class:`OnDisk` in the same records file with photos on disk.
        outlier_target: the outliers' label row (``k`` values, like a row of ``labels``).

    Returns:
        Dataset of ``images`` or ``(images, labels)``: images ``(batch, image_size, image_size,
        3) float32`` in 0–255, labels ``(batch, k) float32`` (``k = 1`` for ``(n,)`` labels).
        The same elements, in the same order (shuffled or not), whether the photos come from
        the files, from memory or from disk.

    Raises:
        ValueError: ``images`` or ``outliers`` of the wrong shape, dtype or size, outliers in
            memory with images on disk or the other way round, or ``outliers`` without
            ``labels``.
    """
    if outliers is not None and labels is None:
        raise ValueError("outliers need a labelled dataset")
    rows = None if labels is None else np.asarray(labels, np.float32).reshape(len(paths), -1)
    fetch = None
    if isinstance(images, OnDisk):
        ds, fetch = _on_disk(paths, rows, image_size, images, outliers, outlier_target)
    else:
        ds = _in_memory(paths, rows, image_size, images, cache, outliers, outlier_target)
    if shuffle:
        size = len(paths) + (0 if outliers is None else len(outliers))
        ds = ds.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if fetch is not None:  # on disk: a batch of positions → its photos (and labels)
        ds = ds.map(fetch, num_parallel_calls=parallel_calls())

    def to_float(x):
        x = tf.cast(x, tf.float32)
        return augment(x, training=True) if augment is not None else x

    ds = ds.map((lambda x, y: (to_float(x), y)) if labels is not None else to_float,
                num_parallel_calls=parallel_calls())
    return ds.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())
