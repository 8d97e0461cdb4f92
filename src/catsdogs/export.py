"""Export a trained run for fast inference: ONNX (ONNX Runtime) or LiteRT (``.tflite``).

``catsdogs export RUN --format onnx|tflite`` writes ``RUN/model.onnx`` or ``RUN/model.tflite``
with Keras 3's own exporter (``model.export(..., format="onnx"|"litert")``,
https://keras.io/api/models/model_saving_apis/export/; ONNX goes through tf2onnx, LiteRT through
the TensorFlow Lite converter). The exported graph takes *prepared* images,
``(batch, image_size, image_size, 3) float32`` in 0–255 (the output of
:func:`catsdogs.data.preprocess.prepare`), and returns P(dog), ``(batch, 1) float32``: the
resize step stays in the shared Python preprocessing, so every engine sees identical pixels.

Every export is checked before it is kept: the exported model and the Keras model classify the
same images (random noise plus photos of the run's validation split) and the largest difference
in P(dog) must be at most :data:`TOLERANCE`. The result is recorded in ``RUN/export.json`` with
the SHA-256 of the ``model.keras`` it came from, so a stale export (the Keras model changed
since) is never used in its place.

``--format tflite-int8`` writes ``RUN/model.int8.tflite``, a LiteRT model with int8 weights and
dynamically quantized activations ("dynamic range quantization",
https://ai.google.dev/edge/litert/models/post_training_quantization): about 2× the batch
throughput of float32 on CPUs with AVX-512 VNNI (docs/benchmarks.md), but P(dog) moves by a
few hundredths, so it cannot pass the 1e-4 check. It is kept only where accuracy holds: on the
run's whole validation split it may make at most :data:`INT8_MAX_EXTRA_ERRORS` of the photos more
mistakes than ``model.keras`` (at least one photo). ``--engine auto`` never picks it; predict and
serve use it only when asked (``--engine tflite-int8``).
"""

from __future__ import annotations

import datetime
import importlib.util
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from catsdogs.config import TrainConfig
from catsdogs.data.images import load_image
from catsdogs.data.preprocess import prepare
from catsdogs.data.split import load_split, select
from catsdogs.engines import KerasEngine, load_engine_file, load_run
from catsdogs.errors import CatsDogsError, RunError
from catsdogs.io import atomic_path
from catsdogs.predict import Predictor
from catsdogs.runfolder import (
    EXPORT_FILES,
    MODEL_FILE,
    QUANTIZED_FORMATS,
    SPLITS_FILE,
    file_sha256,
    record_export,
    run_file,
)

TOLERANCE = 1e-4
"""Largest allowed |P(dog) exported − P(dog) Keras| for a float32 export to be kept."""
INT8_MAX_EXTRA_ERRORS = 0.005
"""A quantized export may misclassify at most this fraction of the validation photos (and at
least one photo) more than ``model.keras`` does; otherwise it is not kept."""


class ExportError(RunError):
    """An export failed or its output disagrees with the Keras model."""


def _read_validation(run_dir: str, image_size: int, limit: int | None = None):
    """Prepared photos of the run's validation split (the first ``limit`` of them, or all):
    ``(images, labels, n_listed)``, lists of ``(image_size, image_size, 3) uint8`` arrays and
    of labels; photos that can no longer be read are left out.

    Raises:
        CatsDogsError: ``splits.csv`` is missing or unreadable.
    """
    paths, labels = select(load_split(run_file(run_dir, SPLITS_FILE)), "val")
    images, kept = [], []
    for path, label in list(zip(paths, labels, strict=True))[:limit]:
        try:
            images.append(prepare(load_image(path), image_size))
            kept.append(label)
        except CatsDogsError:
            continue
    return images, kept, len(paths)


def check_images(run_dir: str, image_size: int, n_random: int = 8, n_photos: int = 24,
                 seed: int = 0):
    """Images the export check compares on: ``n_random`` uniform-noise images plus up to
    ``n_photos`` prepared photos of the run's validation split (when ``splits.csv`` and the photos
    are still there). Returns ``(n, image_size, image_size, 3) float32`` in 0–255."""
    rng = np.random.default_rng(seed)
    images = list(rng.integers(0, 256, (n_random, image_size, image_size, 3), dtype=np.uint8))
    try:
        images += _read_validation(run_dir, image_size, n_photos)[0]
    except CatsDogsError:
        pass
    return np.stack(images).astype(np.float32)


_RUNTIMES = {"onnx": ("onnxruntime", "tf2onnx", "onnx"), "tflite": ("ai_edge_litert",),
             "tflite-int8": ("ai_edge_litert",)}


def validation_photos(run_dir: str, image_size: int):
    """The run's whole validation split, prepared: ``(images, labels)`` with images ``(n,
    image_size, image_size, 3) uint8`` (as :func:`catsdogs.data.preprocess.prepare` makes them)
    and labels ``(n,) int`` (0 = cat, 1 = dog). Photos that can no longer be read are left out.

    Raises:
        ExportError: no ``splits.csv`` or no readable validation photo.
    """
    try:
        images, labels, n_listed = _read_validation(run_dir, image_size)
    except CatsDogsError as exc:
        raise ExportError(f"{run_dir}: a quantized export is checked on the run's validation "
                          f"photos, which cannot be read ({exc})") from None
    if not images:
        raise ExportError(f"{run_dir}: a quantized export is checked on the run's validation "
                          f"photos; none of the {n_listed} in splits.csv can be read")
    return np.stack(images), np.asarray(labels)


def _check_quantized(run_dir: str, target: str, model, cfg: TrainConfig, engine) -> dict:
    """Compare a quantized engine with the Keras model on the whole validation split (with the
    run's test-time flips and threshold). Returns the check's fields for ``export.json``.

    Raises:
        ExportError: it makes more mistakes than :data:`INT8_MAX_EXTRA_ERRORS` allows.
    """
    images, labels = validation_photos(run_dir, cfg.image_size)
    threshold = cfg.inference.threshold
    p = {}
    for name, eng in (("keras", KerasEngine(model)), ("quantized", engine)):
        p[name] = Predictor(eng, cfg.image_size, threshold,
                            tta=cfg.inference.tta).predict_prepared(images)
    wrong = {k: int(np.sum((v >= threshold) != labels)) for k, v in p.items()}
    allowed = max(1, math.floor(INT8_MAX_EXTRA_ERRORS * len(labels)))
    if wrong["quantized"] > wrong["keras"] + allowed:
        raise ExportError(f"{target}: the quantized model misclassifies {wrong['quantized']} of "
                          f"{len(labels)} validation photos, model.keras {wrong['keras']} (at "
                          f"most {allowed} more allowed); not kept")
    return {"max_abs_diff": float(np.max(np.abs(p["quantized"] - p["keras"]))),
            "n_checked": int(len(labels)),
            "val_accuracy": 1 - wrong["quantized"] / len(labels),
            "val_accuracy_keras": 1 - wrong["keras"] / len(labels),
            "label_agreement": float(np.mean((p["quantized"] >= threshold)
                                              == (p["keras"] >= threshold)))}


def write_model_file(model, image_size: int, file: str, fmt: str, **converter_options) -> None:
    """Write ``model`` as an ONNX or LiteRT file taking prepared images,
    ``(batch, image_size, image_size, 3) float32``, with Keras' ``model.export``.

    ``converter_options`` go to the TensorFlow Lite converter (LiteRT only), e.g.
    ``optimizations`` and ``representative_dataset`` for int8 quantization.
    """
    model.export(file, format="litert" if fmt == "tflite" else "onnx", verbose=False,
                 input_signature=[keras.InputSpec(shape=(None, image_size, image_size, 3),
                                                  dtype="float32")],
                 **converter_options)


def export_run(run_dir: str, fmt: str, *, verbose: bool = True) -> dict:
    """Export ``RUN/model.keras`` to ``fmt`` and check it against the Keras model.

    Args:
        run_dir: a finished run folder.
        fmt: ``"onnx"``, ``"tflite"`` or ``"tflite-int8"`` (see :data:`EXPORT_FILES`).
        verbose: print what was written and the check's result.

    Returns:
        The record written to ``export.json`` for this format: ``file``, ``bytes``, ``sha256``
        (of the exported file), ``model_sha256`` (of the ``model.keras`` it came from),
        ``max_abs_diff`` (P(dog), over :func:`check_images`; for ``tflite-int8`` over the
        validation split), ``n_checked``, ``seconds`` (export wall time) and ``created`` (UTC,
        ISO 8601); for ``tflite-int8`` also ``val_accuracy``, ``val_accuracy_keras`` and
        ``label_agreement``.

    Raises:
        RunError: not a finished run folder.
        ExportError: unknown format, a missing exporter/runtime package, a failed conversion, an
            exported model that differs from the Keras model by more than :data:`TOLERANCE`
            (a quantized one: more validation mistakes than :data:`INT8_MAX_EXTRA_ERRORS`
            allows, or no validation photos to check on), a ``model.keras`` replaced during the
            export, or a file that cannot be written (in every case the exported file is not
            kept).
    """
    if fmt not in EXPORT_FILES:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {sorted(EXPORT_FILES)}")
    missing = [m for m in _RUNTIMES[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"{fmt} export needs {', '.join(missing)}: "
                          "pip install 'catsdogs[export]'")
    model_path, target = run_file(run_dir, MODEL_FILE), run_file(run_dir, EXPORT_FILES[fmt])
    try:
        model_sha = file_sha256(model_path) if os.path.isfile(model_path) else None
        model, cfg = load_run(run_dir)
        with atomic_path(target, suffix=os.path.splitext(target)[1]) as tmp:
            seconds = _convert(model, cfg.image_size, tmp, fmt, target)
            check = _check(run_dir, tmp, fmt, target, model, cfg)
            exported_sha = file_sha256(tmp)
            if file_sha256(model_path) != model_sha:
                raise ExportError(f"{model_path} changed during the export; run it again")
        record = {"file": EXPORT_FILES[fmt], "bytes": os.path.getsize(target),
                  "sha256": exported_sha, "model_sha256": model_sha, **check,
                  "seconds": round(seconds, 3),
                  "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        record_export(run_dir, fmt, record)
    except OSError as exc:
        raise ExportError(f"{exc.filename or target}: cannot write or read "
                          f"({exc.strerror or exc})") from None
    if verbose:
        _print_record(target, fmt, record)
    return record


def _convert(model, image_size: int, tmp: str, fmt: str, target: str) -> float:
    """Write the exported file to ``tmp``; returns the wall seconds it took.

    Raises:
        ExportError: the conversion failed.
    """
    start = time.perf_counter()
    try:
        if fmt in QUANTIZED_FORMATS:
            write_model_file(model, image_size, tmp, "tflite",
                             optimizations=[tf.lite.Optimize.DEFAULT])
        else:
            write_model_file(model, image_size, tmp, fmt)
    except Exception as exc:  # noqa: BLE001 - converters raise many types
        raise ExportError(f"{target}: {fmt} export failed "
                          f"({type(exc).__name__}: {str(exc)[:300]})") from None
    return time.perf_counter() - start


def _check(run_dir: str, tmp: str, fmt: str, target: str, model, cfg: TrainConfig) -> dict:
    """Run the exported file and compare it with the Keras model (see the module docstring).

    Raises:
        ExportError: it cannot be run, or it disagrees beyond what is allowed.
    """
    try:
        engine = load_engine_file(tmp, fmt)
        if fmt in QUANTIZED_FORMATS:
            return _check_quantized(run_dir, target, model, cfg, engine)
        images = check_images(run_dir, cfg.image_size)
        diff = float(np.max(np.abs(KerasEngine(model)(images) - engine(images))))
        if not diff <= TOLERANCE:  # also catches NaN
            raise ExportError(f"{target}: the exported model disagrees with {MODEL_FILE} "
                              f"(max |ΔP(dog)| = {diff:.2e} > {TOLERANCE:g}); not kept")
        return {"max_abs_diff": diff, "n_checked": int(len(images))}
    except ExportError:
        raise
    except RunError as exc:
        raise ExportError(f"{target}: the exported model cannot be run "
                          f"({str(exc).split(': ', 1)[-1]}); not kept") from None


def _print_record(target: str, fmt: str, record: dict) -> None:
    """What was written and how it compared with the Keras model."""
    print(f"Exported {target} ({record['bytes'] / 1e6:.1f} MB) in {record['seconds']:.1f} s; "
          f"max |ΔP(dog)| vs {MODEL_FILE} over {record['n_checked']} images: "
          f"{record['max_abs_diff']:.1e}")
    if fmt in QUANTIZED_FORMATS:
        print(f"Validation accuracy {record['val_accuracy']:.4f} ({MODEL_FILE} "
              f"{record['val_accuracy_keras']:.4f}); same label on "
              f"{record['label_agreement']:.2%} of the photos. Use it with --engine {fmt}.")
