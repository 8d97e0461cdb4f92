"""Classify photos with a trained run: the one code path shared by ``catsdogs predict``,
``catsdogs evaluate`` and the HTTP server, so a photo gets the same P(dog) everywhere.

A photo is decoded by :func:`catsdogs.data.images.load_image`, resized by :func:`prepare` (the
same function the training pipeline caches its images with) and passed through the model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from catsdogs import CLASSES
from catsdogs.data.images import load_image
from catsdogs.data.pipeline import resize_uint8
from catsdogs.data.scan import is_hidden_or_system
from catsdogs.errors import ImageError, display_path
from catsdogs.run import load_run


def prepare(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resize one decoded photo to the model's input: ``(H, W, 3) uint8`` →
    ``(image_size, image_size, 3) uint8`` (bilinear, antialiased, rounded).

    This is exactly what the training pipeline caches, so training, evaluation, prediction and
    serving all feed the model identical pixels for the same photo.
    """
    return resize_uint8(image, image_size).numpy()


@dataclass
class Prediction:
    """One photo's result. ``p_dog`` is the sigmoid output (0–1); ``error`` is set (and the
    other fields are None) when the photo could not be read."""

    path: str
    label: str | None = None
    p_dog: float | None = None
    error: str | None = None

    @property
    def p_cat(self) -> float | None:
        """1 − P(dog)."""
        return None if self.p_dog is None else 1.0 - self.p_dog

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "p_dog": self.p_dog,
                "p_cat": self.p_cat, "error": self.error}


class Predictor:
    """A loaded model plus its preprocessing, safe to share between threads.

    Args:
        model: a model from :func:`catsdogs.run.load_model` (input any size, output P(dog)).
        image_size: the size its training used (from ``config.json``).
        threshold: P(dog) at or above which the label is ``dog``.
    """

    def __init__(self, model, image_size: int, threshold: float = 0.5, batch_size: int = 32):
        self.model = model
        self.image_size = image_size
        self.threshold = threshold
        self.batch_size = batch_size
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str) -> Predictor:
        """Load ``run_dir``'s ``model.keras`` (safe mode) and settings.

        Raises:
            RunError: not a finished run folder, or the model cannot be loaded.
        """
        model, cfg = load_run(run_dir)
        return cls(model, cfg.image_size, cfg.threshold)

    def label(self, p_dog: float) -> str:
        """``"dog"`` if ``p_dog >= threshold`` else ``"cat"``."""
        return CLASSES[int(p_dog >= self.threshold)]

    def predict_prepared(self, batch: np.ndarray) -> np.ndarray:
        """P(dog) for prepared images, ``(n, image_size, image_size, 3) uint8`` →
        ``(n,) float32``."""
        if len(batch) == 0:
            return np.zeros((0,), np.float32)
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = tf.convert_to_tensor(batch[i:i + self.batch_size], tf.float32)
            with self._lock:  # one model call at a time: Keras layers are not re-entrant
                out.append(self._call(x).numpy().reshape(-1))
        return np.concatenate(out).astype(np.float32)

    def predict_images(self, images: list[np.ndarray]) -> np.ndarray:
        """P(dog) for decoded ``(H, W, 3) uint8`` photos of any sizes → ``(n,) float32``."""
        if not images:
            return np.zeros((0,), np.float32)
        return self.predict_prepared(np.stack([prepare(im, self.image_size) for im in images]))

    def predict_sources(self, sources: list, names: list[str] | None = None) -> list[Prediction]:
        """Decode and classify paths or byte strings; unreadable ones get ``error`` set.

        Args:
            sources: file paths or file contents (``bytes``).
            names: how to name each in results (defaults to the path).
        """
        names = names or [display_path(s) for s in sources]
        results = [Prediction(n) for n in names]
        images, index = [], []
        for i, (src, name) in enumerate(zip(sources, names, strict=True)):
            try:
                images.append(load_image(src, name=name))
                index.append(i)
            except ImageError as exc:
                results[i].error = exc.reason
        for i, p in zip(index, self.predict_images(images), strict=True):
            results[i].p_dog = float(p)
            results[i].label = self.label(float(p))
        return results


def expand_paths(paths: Iterable[str]) -> Iterator[tuple[str, str | None]]:
    """Files to classify from files and folders (folders are searched recursively, hidden and
    system files skipped). Yields ``(path, None)`` or ``(path, error)`` for a path that does not
    exist."""
    for path in paths:
        if os.path.isdir(path):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not is_hidden_or_system(name):
                        yield os.path.join(dirpath, name), None
        elif os.path.lexists(path):
            yield path, None
        else:
            yield path, "no such file or folder"


def predict_paths(predictor: Predictor, paths: Iterable[str],
                  chunk: int = 64) -> Iterator[Prediction]:
    """Classify files and folders, yielding results in order, ``chunk`` photos at a time."""
    pending: list[str] = []

    def flush():
        yield from predictor.predict_sources(pending)
        pending.clear()

    for path, error in expand_paths(paths):
        if error:
            yield from flush()
            yield Prediction(display_path(path), error=error)
            continue
        pending.append(path)
        if len(pending) >= chunk:
            yield from flush()
    yield from flush()
