"""Classify photos with a trained run: the one code path shared by ``catsdogs predict``,
``catsdogs evaluate`` and the HTTP server, so a photo gets the same P(dog) everywhere.

A photo is decoded by :func:`catsdogs.data.images.load_image`, resized by :func:`prepare` (the
same function the training pipeline caches its images with) and passed through the model.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from catsdogs import CLASSES
from catsdogs.data.images import load_image
from catsdogs.data.pipeline import parallel_calls, resize_uint8
from catsdogs.data.scan import is_hidden_or_system
from catsdogs.errors import ImageError, RunError, display_path
from catsdogs.run import load_run

log = logging.getLogger(__name__)


def prepare(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resize one decoded photo to the model's input: ``(H, W, 3) uint8`` →
    ``(image_size, image_size, 3) uint8`` (bilinear, antialiased, rounded).

    This is exactly what the training pipeline caches, so training, evaluation, prediction and
    serving all feed the model identical pixels for the same photo.
    """
    return _resize_uint8(image, image_size).numpy()


# Compiled once per input rank/size class: ~25 % less per-photo overhead than eager ops, same
# pixels (the graph is the same :func:`resize_uint8`).
_resize_uint8 = tf.function(resize_uint8, reduce_retracing=True)


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


class KerasEngine:
    """The Keras model as an inference engine: prepared images ``(n, S, S, 3) float32`` (0–255)
    → P(dog) ``(n,) float32``. Calls go through one compiled ``tf.function`` (no per-call Python
    overhead of ``model.predict``), one at a time: Keras layers are not re-entrant."""

    name = "keras"

    def __init__(self, model):
        self.model = model
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self.lock = threading.Lock()
        """Held around every model call; share it with other users of ``model`` (Grad-CAM)."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = tf.convert_to_tensor(images, tf.float32)
        with self.lock:
            return self._call(x).numpy().reshape(-1).astype(np.float32)


class OnnxEngine:
    """An exported ``model.onnx`` in ONNX Runtime (https://onnxruntime.ai/docs/api/python/),
    CPU execution provider. ``InferenceSession.run`` is thread-safe, so no lock is needed.

    Raises:
        RunError: onnxruntime is not installed, or the file cannot be loaded.
    """

    name = "onnx"

    def __init__(self, path: str):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunError("the onnx engine needs onnxruntime: pip install 'catsdogs[export]'") \
                from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise RunError(f"{path}: cannot load ONNX model ({str(exc)[:200]})") from None
        self._input = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {self._input: x})[0].reshape(-1).astype(np.float32)


class LiteRTEngine:
    """An exported ``model.tflite`` in the LiteRT interpreter (``ai_edge_litert``, XNNPACK CPU
    kernels; https://ai.google.dev/edge/litert/inference). The interpreter is not thread-safe:
    calls take a lock. Its input is resized to each call's batch size.

    Raises:
        RunError: ai-edge-litert is not installed, or the file cannot be loaded.
    """

    name = "tflite"

    def __init__(self, path: str, num_threads: int | None = None, name: str = "tflite"):
        self.name = name
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise RunError("the tflite engine needs ai-edge-litert: "
                           "pip install 'catsdogs[export]'") from None
        try:
            self.interpreter = Interpreter(model_path=path,
                                           num_threads=num_threads or parallel_calls())
        except Exception as exc:  # noqa: BLE001
            raise RunError(f"{path}: cannot load LiteRT model ({str(exc)[:200]})") from None
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = -1
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        with self._lock:
            if len(x) != self._batch:
                self.interpreter.resize_tensor_input(self._input, x.shape, strict=True)
                self.interpreter.allocate_tensors()
                self._batch = len(x)
            self.interpreter.set_tensor(self._input, x)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._output).reshape(-1).astype(np.float32)


def load_engine_file(path: str, fmt: str):
    """An engine for an exported model file of format ``"onnx"``, ``"tflite"`` or
    ``"tflite-int8"`` (:data:`catsdogs.export.EXPORT_FILES`); the engine's ``name`` is ``fmt``."""
    return OnnxEngine(path) if fmt == "onnx" else LiteRTEngine(path, name=fmt)


def load_engine(run_dir: str, engine: str = "auto"):
    """The inference engine for a finished run, and its config.

    Args:
        run_dir: run folder.
        engine: one of :data:`catsdogs.export.ENGINES`.

    Returns:
        ``(engine, config)``; ``engine(images)`` maps ``(n, S, S, 3) float32`` → ``(n,) float32``.

    Raises:
        RunError: not a finished run; ``engine`` names a format that was not exported, or was
            exported from an older ``model.keras`` (re-run ``catsdogs export``).
    """
    from catsdogs.config import TrainConfig
    from catsdogs.export import ENGINES, EXPORT_FILES, export_status, read_export_info

    if engine not in ENGINES:
        raise RunError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    if engine in EXPORT_FILES:
        if not os.path.isdir(run_dir):
            raise RunError(f"{run_dir}: no such run folder")
        config = TrainConfig.load(run_dir)
        path, reason = export_status(run_dir, engine)
        if path is None:
            raise RunError(f"cannot use the {engine} engine: {reason}; create it with: "
                           f"catsdogs export {run_dir} --format {engine}")
        return load_engine_file(path, engine), config
    if engine == "auto" and os.path.isdir(run_dir):
        try:
            read_export_info(run_dir)
            formats = ("tflite", "onnx")  # float32 exports only, never a quantized one
        except RunError as exc:  # a bad export.json must not stop a run with a good model
            log.warning("not using exported models: %s; using model.keras", exc)
            formats = ()
        for fmt in formats:
            path = export_status(run_dir, fmt)[0]
            if path is not None:
                try:
                    return load_engine_file(path, fmt), TrainConfig.load(run_dir)
                except RunError as exc:  # e.g. the runtime package is not installed
                    log.warning("not using %s: %s", path, exc)
    model, config = load_run(run_dir)
    return KerasEngine(model), config


class Predictor:
    """An inference engine plus its preprocessing, safe to share between threads.

    Args:
        model: a Keras model from :func:`catsdogs.run.load_model` (input any size, output
            P(dog)), or an engine (:class:`KerasEngine`, :class:`OnnxEngine`,
            :class:`LiteRTEngine`).
        image_size: the size its training used (from ``config.json``).
        threshold: P(dog) at or above which the label is ``dog``.
        batch_size: photos per engine call.
        tta: test-time augmentation with horizontal flips: P(dog) is the mean of the model's
            P(dog) for the photo and its mirror image (as in Krizhevsky et al. 2012, "ImageNet
            Classification with Deep CNNs", §4.1, and fastai's ``tta``); two model calls per
            photo. A run's ``config.json`` says whether its preset uses it.
    """

    def __init__(self, model, image_size: int, threshold: float = 0.5, batch_size: int = 32,
                 tta: bool = False):
        engines = (KerasEngine, OnnxEngine, LiteRTEngine)
        self.engine = model if isinstance(model, engines) else KerasEngine(model)
        self.image_size = image_size
        self.threshold = threshold
        self.batch_size = batch_size
        self.tta = tta

    @classmethod
    def from_run(cls, run_dir: str, engine: str = "auto") -> Predictor:
        """Load ``run_dir``'s model (see :func:`load_engine`) and settings.

        Raises:
            RunError: not a finished run folder, or the model cannot be loaded.
        """
        eng, cfg = load_engine(run_dir, engine)
        return cls(eng, cfg.image_size, cfg.threshold, tta=cfg.tta)

    @property
    def engine_name(self) -> str:
        """``"keras"``, ``"onnx"``, ``"tflite"`` or ``"tflite-int8"``."""
        return self.engine.name

    def label(self, p_dog: float) -> str:
        """``"dog"`` if ``p_dog >= threshold`` else ``"cat"``."""
        return CLASSES[int(p_dog >= self.threshold)]

    def predict_prepared(self, batch: np.ndarray) -> np.ndarray:
        """P(dog) for prepared images, ``(n, image_size, image_size, 3) uint8`` →
        ``(n,) float32`` (averaged with the mirror images' when :attr:`tta` is set)."""
        if len(batch) == 0:
            return np.zeros((0,), np.float32)
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = batch[i:i + self.batch_size].astype(np.float32)
            p = self.engine(x)
            if self.tta:
                p = (p + self.engine(np.ascontiguousarray(x[:, :, ::-1]))) / 2
            out.append(p)
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
