"""Classify photos with a trained run: the one code path shared by ``catsdogs predict``,
``catsdogs evaluate``, the Python API and the HTTP server, so a photo gets the same P(dog)
everywhere.

A photo is decoded by :func:`catsdogs.data.images.load_image`, resized by
:func:`catsdogs.data.preprocess.prepare` (the same function the training pipeline caches its
images with) and passed through an inference engine (:mod:`catsdogs.engines`); the run's
:class:`catsdogs.config.InferenceSettings` (threshold, test-time flips) turn P(dog) into a label.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from catsdogs.config import InferenceSettings
from catsdogs.constants import CLASSES
from catsdogs.data.images import load_image
from catsdogs.data.pipeline import make_dataset
from catsdogs.data.preprocess import prepare
from catsdogs.data.scan import is_hidden_or_system
from catsdogs.engines import KerasEngine, LiteRTEngine, OnnxEngine, load_config, load_engine
from catsdogs.errors import ImageError, display_path
from catsdogs.ood import is_other, ood_score

OTHER = "other"
"""The label of a photo that is neither a cat nor a dog."""


@dataclass
class Prediction:
    """One photo's result.

    Attributes:
        path: the photo's path or name.
        label: ``"cat"``, ``"dog"`` or ``"other"`` (neither a cat nor a dog: its
            :attr:`ood_score` is above the run's rejection threshold).
        p_dog: the sigmoid output, P(dog) between cat and dog (0–1), also for ``other``.
        ood_score: how little the photo looks like a cat or a dog, 0–1
            (:func:`catsdogs.ood.ood_score`).
        error: set (and the other fields None) when the photo could not be read.
    """

    path: str
    label: str | None = None
    p_dog: float | None = None
    error: str | None = None
    ood_score: float | None = None

    @property
    def p_cat(self) -> float | None:
        """1 − P(dog)."""
        return None if self.p_dog is None else 1.0 - self.p_dog

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "p_dog": self.p_dog,
                "p_cat": self.p_cat, "ood_score": self.ood_score, "error": self.error}


class Predictor:
    """An inference engine plus its preprocessing and settings, safe to share between threads.

    Args:
        model: a Keras model from :func:`catsdogs.models.load_model` (input any size, output
            P(dog)), or an engine (:class:`~catsdogs.engines.KerasEngine`,
            :class:`~catsdogs.engines.OnnxEngine`, :class:`~catsdogs.engines.LiteRTEngine`).
        image_size: the size its training used (from ``config.json``), pixels.
        threshold: P(dog) at or above which the label is ``dog``.
        batch_size: photos per engine call (with ``tta``, each call holds them and their mirror
            images, twice as many).
        tta: test-time flips: P(dog) is the mean over the photo and its mirror image; two model
            passes per photo (see :class:`catsdogs.config.InferenceSettings`).
        ood_threshold: OOD score above which the label is ``other`` (None: never).
    """

    def __init__(self, model, image_size: int, threshold: float = 0.5, batch_size: int = 64,
                 tta: bool = False, ood_threshold: float | None = None):
        engines = (KerasEngine, OnnxEngine, LiteRTEngine)
        self.engine = model if isinstance(model, engines) else KerasEngine(model)
        self.image_size = image_size
        self.threshold = threshold
        self.batch_size = batch_size
        self.tta = tta
        self.ood_threshold = ood_threshold

    @classmethod
    def from_run(cls, run_dir: str, settings: InferenceSettings | None = None,
                 **overrides) -> Predictor:
        """Load ``run_dir``'s model and inference settings.

        Args:
            run_dir: a finished run folder.
            settings: inference settings to use instead of the run's own.
            **overrides: single settings to change (``threshold``, ``tta``, ``engine``; ``None``
                keeps the run's).

        Raises:
            RunError: not a finished run folder, or the model cannot be loaded.
            ConfigError: a bad override.
        """
        chosen = (settings or load_config(run_dir).inference).with_overrides(**overrides)
        eng, cfg = load_engine(run_dir, chosen.engine)
        return cls(eng, cfg.image_size, chosen.threshold, tta=chosen.tta,
                   ood_threshold=chosen.ood_threshold)

    @property
    def settings(self) -> InferenceSettings:
        """The threshold, test-time flips and engine this predictor uses."""
        return InferenceSettings(self.threshold, self.tta, self.engine.name, self.ood_threshold)

    @property
    def engine_name(self) -> str:
        """``"keras"``, ``"onnx"``, ``"tflite"`` or ``"tflite-int8"``."""
        return self.engine.name

    def label(self, p_dog: float, score: float | None = None) -> str:
        """``"other"`` if the OOD ``score`` (default: from ``p_dog`` alone) is above
        :attr:`ood_threshold`, else ``"dog"`` if ``p_dog >= threshold``, else ``"cat"``."""
        score = ood_score(p_dog)[0] if score is None else score
        if is_other(score, self.ood_threshold)[0]:
            return OTHER
        return CLASSES[int(p_dog >= self.threshold)]

    def prediction(self, name: str, outputs: np.ndarray) -> Prediction:
        """The :class:`Prediction` for a photo named ``name`` from its model outputs ``(k,)``
        (one row of :meth:`outputs_prepared`)."""
        p_dog, score = float(outputs[0]), float(ood_score(outputs[None])[0])
        return Prediction(name, label=self.label(p_dog, score), p_dog=p_dog, ood_score=score)

    def outputs_prepared(self, batch: np.ndarray) -> np.ndarray:
        """The model's outputs for prepared images, ``(n, image_size, image_size, 3) uint8`` →
        ``(n, k) float32``: P(dog) in column 0, P(pet) in column 1 when the model has a pet
        head (averaged with the mirror images' when :attr:`tta` is set)."""
        if len(batch) == 0:
            return np.zeros((0, 1), np.float32)
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = batch[i:i + self.batch_size].astype(np.float32)
            if self.tta:  # one call for photos and mirror images: a call has a fixed cost
                both = self.engine(np.concatenate([x, x[:, :, ::-1]]))
                p = (both[:len(x)] + both[len(x):]) / 2
            else:
                p = self.engine(x)
            out.append(p)
        return np.concatenate(out).astype(np.float32)

    def predict_prepared(self, batch: np.ndarray) -> np.ndarray:
        """P(dog) for prepared images, ``(n, image_size, image_size, 3) uint8`` →
        ``(n,) float32`` (see :meth:`outputs_prepared`)."""
        return self.outputs_prepared(batch)[:, 0]

    def outputs_images(self, images: list[np.ndarray]) -> np.ndarray:
        """:meth:`outputs_prepared` for decoded ``(H, W, 3) uint8`` photos of any sizes."""
        if not images:
            return np.zeros((0, 1), np.float32)
        return self.outputs_prepared(np.stack([prepare(im, self.image_size) for im in images]))

    def predict_images(self, images: list[np.ndarray]) -> np.ndarray:
        """P(dog) for decoded ``(H, W, 3) uint8`` photos of any sizes → ``(n,) float32``."""
        return self.outputs_images(images)[:, 0]

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
        for i, row in zip(index, self.outputs_images(images), strict=True):
            results[i] = self.prediction(results[i].path, row)
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


def classify_files(predictor: Predictor, paths: list[str], progress: bool = True,
                   desc: str = "evaluate") -> np.ndarray:
    """Model outputs of every photo file, ``(n, k) float32`` (P(dog) in column 0, see
    :meth:`Predictor.outputs_prepared`), read through the same tf.data
    decode-and-resize as training (64 photos per batch, with a progress bar); for many photos
    whose files were validated already (evaluation), where :func:`predict_paths` reports
    unreadable files one by one instead."""
    if not paths:
        return np.zeros((0, 1), np.float32)
    ds = make_dataset(paths, None, predictor.image_size, 64, cache=False)
    batches = tqdm(ds, desc=desc, unit="batch", disable=not progress, leave=False)
    return np.concatenate([predictor.outputs_prepared(x.numpy()) for x in batches])
