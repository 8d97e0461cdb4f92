"""Inference engines: a trained model behind one call, prepared images → P(dog).

Every engine maps ``(n, S, S, 3) float32`` images in 0–255 (prepared by
:func:`catsdogs.data.preprocess.prepare`) to the model's outputs, ``(n, k) float32``: column 0 is
P(dog), and a model trained with other photos has P(pet) in column 1
(:data:`catsdogs.models.PET_COLUMN`). Each engine has a ``name``:

* :class:`KerasEngine`: ``model.keras`` through one compiled ``tf.function``;
* :class:`OnnxEngine`: ``model.onnx`` in ONNX Runtime;
* :class:`LiteRTEngine`: ``model.tflite`` (or ``model.int8.tflite``) in LiteRT.

:func:`load_engine` picks one for a run folder (``--engine``).
"""

from __future__ import annotations

import logging
import os
import threading

import keras
import numpy as np
import tensorflow as tf

from catsdogs.config import ENGINES, TrainConfig
from catsdogs.data.pipeline import parallel_calls
from catsdogs.errors import ConfigError, RunError
from catsdogs.models import load_model
from catsdogs.runfolder import EXPORT_FILES, MODEL_FILE, export_status, read_export_info, run_file

log = logging.getLogger(__name__)

AUTO_ORDER = ("tflite", "onnx")
"""Export formats ``--engine auto`` tries, in order (float32 exports only, never a quantized
one): LiteRT had the higher batch throughput in our benchmarks (docs/benchmarks.md)."""


class KerasEngine:
    """The Keras model as an inference engine. Calls go through one compiled ``tf.function``
    (no per-call Python overhead of ``model.predict``), one at a time: Keras layers are not
    re-entrant."""

    name = "keras"

    def __init__(self, model: keras.Model):
        self.model = model
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self.lock = threading.Lock()
        """Held around every model call; share it with other users of ``model`` (Grad-CAM)."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = tf.convert_to_tensor(images, tf.float32)
        with self.lock:
            return self._call(x).numpy().reshape(len(x), -1).astype(np.float32)


class OnnxEngine:
    """An exported ``model.onnx`` in ONNX Runtime (https://onnxruntime.ai/docs/api/python/),
    CPU execution provider. ``InferenceSession.run`` is thread-safe, so no lock is needed.

    Raises:
        RunError: onnxruntime is not installed, or the file cannot be loaded.
    """

    name = "onnx"

    def __init__(self, file: str):
        try:  # an optional dependency (the `export` extra): imported only when asked for
            import onnxruntime as ort
        except ImportError:
            raise RunError("the onnx engine needs onnxruntime: pip install 'catsdogs[export]'") \
                from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise RunError(f"{file}: cannot load ONNX model ({str(exc)[:200]})") from None
        self._input = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {self._input: x})[0].reshape(len(x), -1).astype(np.float32)


class LiteRTEngine:
    """An exported ``model.tflite`` in the LiteRT interpreter (``ai_edge_litert``, XNNPACK CPU
    kernels; https://ai.google.dev/edge/litert/inference). The interpreter is not thread-safe:
    calls take a lock. Its input is resized to each call's batch size.

    Raises:
        RunError: ai-edge-litert is not installed, or the file cannot be loaded.
    """

    name = "tflite"

    def __init__(self, file: str, num_threads: int | None = None, name: str = "tflite"):
        self.name = name
        try:  # an optional dependency (the `export` extra): imported only when asked for
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise RunError("the tflite engine needs ai-edge-litert: "
                           "pip install 'catsdogs[export]'") from None
        try:
            self.interpreter = Interpreter(model_path=file,
                                           num_threads=num_threads or parallel_calls())
        except Exception as exc:  # noqa: BLE001
            raise RunError(f"{file}: cannot load LiteRT model ({str(exc)[:200]})") from None
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
            out = self.interpreter.get_tensor(self._output)
            return out.reshape(len(x), -1).astype(np.float32)


Engine = KerasEngine | OnnxEngine | LiteRTEngine
"""Any inference engine."""


def load_config(run_dir: str) -> TrainConfig:
    """A run folder's ``config.json``.

    Raises:
        RunError: no such folder, or no readable ``config.json`` in it.
    """
    if not os.path.isdir(run_dir):
        raise RunError(f"{run_dir}: no such run folder")
    return TrainConfig.load(run_dir)


def load_run(run_dir: str) -> tuple[keras.Model, TrainConfig]:
    """Load a finished run's Keras model (safe mode) and config.

    Raises:
        RunError: not a run folder, or the model cannot be loaded.
    """
    config = load_config(run_dir)
    return load_model(run_file(run_dir, MODEL_FILE)), config


def load_engine_file(file: str, fmt: str) -> OnnxEngine | LiteRTEngine:
    """An engine for an exported model file of format ``"onnx"``, ``"tflite"`` or
    ``"tflite-int8"`` (:data:`catsdogs.runfolder.EXPORT_FILES`); the engine's ``name`` is
    ``fmt``."""
    return OnnxEngine(file) if fmt == "onnx" else LiteRTEngine(file, name=fmt)


def _auto_export(run_dir: str) -> OnnxEngine | LiteRTEngine | None:
    """The first usable, up-to-date float32 export of :data:`AUTO_ORDER`, or None."""
    try:
        read_export_info(run_dir)
    except RunError as exc:  # a bad export.json must not stop a run with a good model
        log.warning("not using exported models: %s; using %s", exc, MODEL_FILE)
        return None
    for fmt in AUTO_ORDER:
        exported = export_status(run_dir, fmt)[0]
        if exported is not None:
            try:
                return load_engine_file(exported, fmt)
            except RunError as exc:  # e.g. the runtime package is not installed
                log.warning("not using %s: %s", exported, exc)
    return None


def load_engine(run_dir: str, engine: str = "auto") -> tuple[Engine, TrainConfig]:
    """The inference engine for a finished run, and its config.

    Args:
        run_dir: run folder.
        engine: one of :data:`catsdogs.config.ENGINES`.

    Returns:
        ``(engine, config)``; ``engine(images)`` maps ``(n, S, S, 3) float32`` → ``(n, k)
        float32`` (P(dog) in column 0).

    Raises:
        ConfigError: unknown engine.
        RunError: not a finished run; ``engine`` names a format that was not exported, or was
            exported from an older ``model.keras`` (re-run ``catsdogs export``).
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    config = load_config(run_dir)
    if engine in EXPORT_FILES:
        exported, reason = export_status(run_dir, engine)
        if exported is None:
            raise RunError(f"cannot use the {engine} engine: {reason}; create it with: "
                           f"catsdogs export {run_dir} --format {engine}")
        return load_engine_file(exported, engine), config
    if engine == "auto" and (found := _auto_export(run_dir)) is not None:
        return found, config
    return KerasEngine(load_model(run_file(run_dir, MODEL_FILE))), config
