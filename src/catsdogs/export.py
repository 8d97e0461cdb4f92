"""Export a trained run for fast inference: ONNX (ONNX Runtime) or LiteRT (``.tflite``).

``catsdogs export RUN --format onnx|tflite`` writes ``RUN/model.onnx`` or ``RUN/model.tflite``
with Keras 3's own exporter (``model.export(..., format="onnx"|"litert")``,
https://keras.io/api/models/model_saving_apis/export/; ONNX goes through tf2onnx, LiteRT through
the TensorFlow Lite converter). The exported graph takes *prepared* images,
``(batch, image_size, image_size, 3) float32`` in 0–255 (the output of
:func:`catsdogs.predict.prepare`), and returns P(dog), ``(batch, 1) float32``: the resize step
stays in the shared Python preprocessing, so every engine sees identical pixels.

Every export is checked before it is kept: the exported model and the Keras model classify the
same images (random noise plus photos of the run's validation split) and the largest difference
in P(dog) must be at most :data:`TOLERANCE`. The result is recorded in ``RUN/export.json`` with
the SHA-256 of the ``model.keras`` it came from, so a stale export (the Keras model changed
since) is never used in its place.

``--format tflite-int8`` writes ``RUN/model.int8.tflite``, a LiteRT model with int8 weights and
dynamically quantized activations ("dynamic range quantization",
https://ai.google.dev/edge/litert/models/post_training_quantization): about 2× the batch
throughput of float32 on our AVX-512 VNNI CPU (README "Faster inference"), but P(dog) moves by a
few hundredths, so it cannot pass the 1e-4 check. It is kept only where accuracy holds: on the
run's whole validation split it may make at most :data:`INT8_MAX_EXTRA_ERRORS` of the photos more
mistakes than ``model.keras`` (at least one photo). ``--engine auto`` never picks it; predict and
serve use it only when asked (``--engine tflite-int8``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os

from catsdogs.errors import RunError
from catsdogs.io import atomic_path, atomic_write_text

# (no TensorFlow/Keras import at module level: the command line reads FORMATS and ENGINES)
MODEL_FILE = "model.keras"
"""The Keras model's file name in a run folder."""
FORMATS: dict[str, str] = {"onnx": "model.onnx", "tflite": "model.tflite"}
"""Float32 export format → file name inside the run folder (P(dog) within :data:`TOLERANCE`)."""
QUANTIZED_FORMATS: dict[str, str] = {"tflite-int8": "model.int8.tflite"}
"""Quantized export format → file name (checked on validation accuracy instead)."""
EXPORT_FILES: dict[str, str] = {**FORMATS, **QUANTIZED_FORMATS}
"""Every export format → file name."""
ENGINES = ("auto", "keras", *FORMATS, *QUANTIZED_FORMATS)
"""Inference engines for ``predict``/``serve`` (``--engine``). ``auto`` takes an up-to-date
float32 exported model when the run has one (LiteRT first, the fastest here; README "Faster
inference"), else the Keras model; it never takes a quantized one."""

EXPORT_INFO = "export.json"
TOLERANCE = 1e-4
"""Largest allowed |P(dog) exported − P(dog) Keras| for a float32 export to be kept."""
INT8_MAX_EXTRA_ERRORS = 0.005
"""A quantized export may misclassify at most this fraction of the validation photos (and at
least one photo) more than ``model.keras`` does; otherwise it is not kept."""


class ExportError(RunError):
    """An export failed or its output disagrees with the Keras model."""


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_export_info(run_dir: str) -> dict:
    """``RUN/export.json`` as a dict (format → record dict), or ``{}`` when there is none.

    Raises:
        RunError: the file exists but is unreadable or not a catsdogs export record.
    """
    path = os.path.join(run_dir, EXPORT_INFO)
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise RunError(f"{path}: not a catsdogs export record (expected format → object)")
    return info


def export_status(run_dir: str, fmt: str) -> tuple[str | None, str]:
    """Whether ``fmt``'s exported model can stand in for ``model.keras``.

    Returns:
        ``(path, "ok")`` when ``RUN/model.<fmt>`` exists, is byte-for-byte the file that was
        checked (SHA-256 in ``export.json``), and came from the current ``model.keras`` (its
        SHA-256 too); else ``(None, reason)``.

    Raises:
        RunError: ``export.json`` is unreadable.
    """
    path = os.path.join(run_dir, EXPORT_FILES[fmt])
    record = read_export_info(run_dir).get(fmt)
    if not os.path.isfile(path):
        return None, f"{path} does not exist"
    if not record:
        return None, f"{path} is not recorded in {EXPORT_INFO} (not made by catsdogs export)"
    model_path = os.path.join(run_dir, MODEL_FILE)
    try:
        if record.get("sha256") != file_sha256(path):
            return None, f"{path} changed since it was exported and checked"
        if not os.path.isfile(model_path):
            return None, f"{model_path} does not exist"
        if record.get("model_sha256") != file_sha256(model_path):
            return None, f"{model_path} changed since {path} was exported from it"
    except OSError as exc:
        return None, f"cannot read {exc.filename}: {exc.strerror}"
    return path, "ok"


def _read_validation(run_dir: str, image_size: int, limit: int | None = None):
    """Prepared photos of the run's validation split (the first ``limit`` of them, or all):
    ``(images, labels, n_listed)``, lists of ``(image_size, image_size, 3) uint8`` arrays and
    of labels; photos that can no longer be read are left out.

    Raises:
        CatsDogsError: ``splits.csv`` is missing or unreadable.
    """
    from catsdogs.data.images import load_image
    from catsdogs.data.split import load_split, select
    from catsdogs.errors import CatsDogsError
    from catsdogs.predict import prepare

    paths, labels = select(load_split(os.path.join(run_dir, "splits.csv")), "val")
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
    import numpy as np

    from catsdogs.errors import CatsDogsError

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
    image_size, image_size, 3) uint8`` (as :func:`catsdogs.predict.prepare` makes them) and labels
    ``(n,) int`` (0 = cat, 1 = dog). Photos that can no longer be read are left out.

    Raises:
        ExportError: no ``splits.csv`` or no readable validation photo.
    """
    import numpy as np

    from catsdogs.errors import CatsDogsError

    try:
        images, labels, n_listed = _read_validation(run_dir, image_size)
    except CatsDogsError as exc:
        raise ExportError(f"{run_dir}: a quantized export is checked on the run's validation "
                          f"photos, which cannot be read ({exc})") from None
    if not images:
        raise ExportError(f"{run_dir}: a quantized export is checked on the run's validation "
                          f"photos; none of the {n_listed} in splits.csv can be read")
    return np.stack(images), np.asarray(labels)


def _check_quantized(run_dir: str, target: str, model, cfg, engine) -> dict:
    """Compare a quantized engine with the Keras model on the whole validation split (with the
    run's test-time flips and threshold). Returns the check's fields for ``export.json``.

    Raises:
        ExportError: it makes more mistakes than :data:`INT8_MAX_EXTRA_ERRORS` allows.
    """
    import math

    import numpy as np

    from catsdogs.predict import KerasEngine, Predictor

    images, labels = validation_photos(run_dir, cfg.image_size)
    p = {}
    for name, eng in (("keras", KerasEngine(model)), ("quantized", engine)):
        p[name] = Predictor(eng, cfg.image_size, cfg.threshold, batch_size=64,
                            tta=cfg.tta).predict_prepared(images)
    wrong = {k: int(np.sum((v >= cfg.threshold) != labels)) for k, v in p.items()}
    allowed = max(1, math.floor(INT8_MAX_EXTRA_ERRORS * len(labels)))
    if wrong["quantized"] > wrong["keras"] + allowed:
        raise ExportError(f"{target}: the quantized model misclassifies {wrong['quantized']} of "
                          f"{len(labels)} validation photos, model.keras {wrong['keras']} (at "
                          f"most {allowed} more allowed); not kept")
    return {"max_abs_diff": float(np.max(np.abs(p["quantized"] - p["keras"]))),
            "n_checked": int(len(labels)),
            "val_accuracy": 1 - wrong["quantized"] / len(labels),
            "val_accuracy_keras": 1 - wrong["keras"] / len(labels),
            "label_agreement": float(np.mean((p["quantized"] >= cfg.threshold)
                                              == (p["keras"] >= cfg.threshold)))}


def write_model_file(model, image_size: int, path: str, fmt: str, **converter_options) -> None:
    """Write ``model`` as an ONNX or LiteRT file taking prepared images,
    ``(batch, image_size, image_size, 3) float32``, with Keras' ``model.export``.

    ``converter_options`` go to the TensorFlow Lite converter (LiteRT only), e.g.
    ``optimizations`` and ``representative_dataset`` for int8 quantization.
    """
    import keras

    model.export(path, format="litert" if fmt == "tflite" else "onnx", verbose=False,
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
    import importlib.util
    import time

    import numpy as np

    from catsdogs.predict import KerasEngine, load_engine_file
    from catsdogs.run import load_run

    if fmt not in EXPORT_FILES:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {sorted(EXPORT_FILES)}")
    missing = [m for m in _RUNTIMES[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"{fmt} export needs {', '.join(missing)}: "
                          "pip install 'catsdogs[export]'")
    model_path = os.path.join(run_dir, MODEL_FILE)
    target = os.path.join(run_dir, EXPORT_FILES[fmt])
    quantized = fmt in QUANTIZED_FORMATS
    try:
        model_sha = file_sha256(model_path) if os.path.isfile(model_path) else None
        model, cfg = load_run(run_dir)
        size = cfg.image_size
        start = time.perf_counter()
        with atomic_path(target, suffix=os.path.splitext(target)[1]) as tmp:
            try:
                if quantized:
                    import tensorflow as tf

                    write_model_file(model, size, tmp, "tflite",
                                     optimizations=[tf.lite.Optimize.DEFAULT])
                else:
                    write_model_file(model, size, tmp, fmt)
            except Exception as exc:  # noqa: BLE001 - converters raise many types
                raise ExportError(f"{target}: {fmt} export failed "
                                  f"({type(exc).__name__}: {str(exc)[:300]})") from None
            seconds = time.perf_counter() - start
            try:
                engine = load_engine_file(tmp, fmt)
                if quantized:
                    check = _check_quantized(run_dir, target, model, cfg, engine)
                else:
                    images = check_images(run_dir, size)
                    expected = KerasEngine(model)(images)
                    diff = float(np.max(np.abs(expected - engine(images))))
                    if not diff <= TOLERANCE:  # also catches NaN
                        raise ExportError(
                            f"{target}: the exported model disagrees with model.keras "
                            f"(max |ΔP(dog)| = {diff:.2e} > {TOLERANCE:g}); not kept")
                    check = {"max_abs_diff": diff, "n_checked": int(len(images))}
            except ExportError:
                raise
            except RunError as exc:
                raise ExportError(f"{target}: the exported model cannot be run "
                                  f"({str(exc).split(': ', 1)[-1]}); not kept") from None
            exported_sha = file_sha256(tmp)
            if file_sha256(model_path) != model_sha:
                raise ExportError(f"{model_path} changed during the export; run it again")
        record = {"file": EXPORT_FILES[fmt], "bytes": os.path.getsize(target),
                  "sha256": exported_sha, "model_sha256": model_sha, **check,
                  "seconds": round(seconds, 3),
                  "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        # read-modify-write: two exports of one run at the same moment may keep only one record
        # (fail-safe: an unrecorded export is simply not used)
        info = read_export_info(run_dir)
        info[fmt] = record
        atomic_write_text(os.path.join(run_dir, EXPORT_INFO), json.dumps(info, indent=2))
    except OSError as exc:
        raise ExportError(f"{exc.filename or target}: cannot write or read "
                          f"({exc.strerror or exc})") from None
    if verbose:
        print(f"Exported {target} ({record['bytes'] / 1e6:.1f} MB) in {seconds:.1f} s; "
              f"max |ΔP(dog)| vs model.keras over {record['n_checked']} images: "
              f"{record['max_abs_diff']:.1e}")
        if quantized:
            print(f"Validation accuracy {record['val_accuracy']:.4f} (model.keras "
                  f"{record['val_accuracy_keras']:.4f}); same label on "
                  f"{record['label_agreement']:.2%} of the photos. Use it with "
                  f"--engine {fmt}.")
    return record
