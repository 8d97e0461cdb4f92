"""The run folder: the name of every file a run writes, and the small records kept in it.

This module is the one place where run-folder file names are spelled; every other module uses
the constants below. It imports no TensorFlow, so the command line, the server and scripts can
inspect a run folder cheaply.

Layout (``RUN/``)::

    model.keras  config.json  splits.csv  other.csv  scan.json  history.csv  timings.json
    metrics.json  predictions.csv  report.md  plots/  logs/ (TensorBoard)
    plan.json                  a --time-budget run's plan (measured throughput, steps)
    eval-<name>/               evaluate RUN --data <name>: metrics, predictions, plots, report
    model.onnx  model.tflite  model.int8.tflite  export.json     after catsdogs export
    backup/  checkpoints/best.weights.h5                         while training
    cache/photos-<px>px.u8  cache/photos-<px>px.csv              while training with --cache disk
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re

from catsdogs.errors import RunError
from catsdogs.io import atomic_write_text

MODEL_FILE = "model.keras"
"""The trained Keras model (best validated epoch), float32."""
CONFIG_FILE = "config.json"
"""Every setting (:class:`catsdogs.config.TrainConfig`) plus software versions."""
SPLITS_FILE = "splits.csv"
"""The train/val/test manifest (:mod:`catsdogs.data.split`)."""
OTHER_SPLITS_FILE = "other.csv"
"""The non-pet photos of ``--other``: path, kind, split (train/val/test/unseen)."""
SCAN_FILE = "scan.json"
"""The scan report: counts, skipped files with reasons, duplicate groups."""
HISTORY_FILE = "history.csv"
"""One row per epoch: losses, metrics, ``lr``, ``seconds``, ``elapsed``."""
TIMINGS_FILE = "timings.json"
"""Wall seconds of each stage of the last ``train`` call (and the time-budget record)."""
PLAN_FILE = "plan.json"
"""A time-budget run's plan (:class:`catsdogs.budget.BudgetPlan`), saved after every epoch."""
METRICS_FILE = "metrics.json"
"""Test (or ``--data``) metrics from :func:`catsdogs.evaluate.compute_metrics`."""
PREDICTIONS_FILE = "predictions.csv"
"""One row per evaluated photo: path, true, predicted, p_dog, correct."""
REPORT_FILE = "report.md"
"""The readable summary that embeds the plots."""
PLOTS_DIR = "plots"
"""Folder of the PNG plots below."""
HISTORY_PLOT = "history.png"
CONFUSION_PLOT = "confusion_matrix.png"
ROC_PLOT = "roc.png"
SAMPLES_PLOT = "samples.png"
MISTAKES_PLOT = "mistakes.png"
OOD_PLOT = "ood.png"
LOGS_DIR = "logs"
"""TensorBoard logs (Keras' ``TensorBoard`` callback)."""
BACKUP_DIR = "backup"
"""Keras ``BackupAndRestore`` state while training; removed once ``model.keras`` is saved."""
HEAD_BACKUP_DIR = os.path.join(BACKUP_DIR, "head")
"""Transfer learning: the ``BackupAndRestore`` state of stage 1 (head only,
:mod:`catsdogs.transfer`)."""
HEAD_WEIGHTS = os.path.join(BACKUP_DIR, "head.weights.h5")
"""Transfer learning: the weights at the end of stage 1, kept until ``model.keras`` is saved so a
resumed run goes straight to stage 2."""
CACHE_DIR = "cache"
"""``--cache disk``: the decoded, resized photos training reads (:mod:`catsdogs.data.records`);
removed once ``model.keras`` is saved, like :data:`BACKUP_DIR`."""
CACHE_RECORDS = os.path.join(CACHE_DIR, "photos-{size}px.u8")
"""A records file of the disk cache (``{size}``: the photos' side in pixels): record ``i`` is
photo ``i`` of :data:`CACHE_MANIFEST`, ``size × size × 3`` bytes (uint8 RGB, row-major)."""
CACHE_MANIFEST = os.path.join(CACHE_DIR, "photos-{size}px.csv")
"""The keys (photo paths, in record order) of the records file of the same ``{size}``."""
BEST_WEIGHTS = os.path.join("checkpoints", "best.weights.h5")
"""The best validated epoch's weights while training."""
EVAL_PREFIX = "eval-"
"""``evaluate RUN --data DIR`` writes into ``RUN/eval-<DIR's name>/``."""
EXPORT_INFO = "export.json"
"""Format → record of each checked export (:func:`record_export`)."""
FORMATS: dict[str, str] = {"onnx": "model.onnx", "tflite": "model.tflite"}
"""Float32 export format → file name (P(dog) within :data:`catsdogs.export.TOLERANCE`)."""
QUANTIZED_FORMATS: dict[str, str] = {"tflite-int8": "model.int8.tflite"}
"""Quantized export format → file name (checked on validation accuracy instead)."""
EXPORT_FILES: dict[str, str] = {**FORMATS, **QUANTIZED_FORMATS}
"""Every export format → file name."""


def run_file(run: str | os.PathLike, name: str) -> str:
    """``RUN/name`` as a string (``name`` is one of this module's constants)."""
    return os.path.join(os.fspath(run), name)


def cache_files(run: str | os.PathLike, size: int) -> tuple[str, str]:
    """``(records, manifest)``: the paths of the disk cache's files for photos of side ``size``
    pixels in run folder ``run`` (:data:`CACHE_RECORDS`, :data:`CACHE_MANIFEST`)."""
    return (run_file(run, CACHE_RECORDS.format(size=size)),
            run_file(run, CACHE_MANIFEST.format(size=size)))


def is_run_folder(run: str | os.PathLike) -> bool:
    """True when ``run`` holds a catsdogs ``config.json`` (a finished or resumable run)."""
    return os.path.isfile(run_file(run, CONFIG_FILE))


def training_finished(run: str | os.PathLike) -> bool:
    """True when ``model.keras`` is saved and no training backup is left (training done)."""
    return (os.path.exists(run_file(run, MODEL_FILE))
            and not os.path.exists(run_file(run, BACKUP_DIR)))


def eval_dir(run: str | os.PathLike, data: str | os.PathLike) -> str:
    """Where ``evaluate RUN --data DATA`` writes: ``RUN/eval-<DATA's folder name>``, the name
    reduced to letters, digits, ``.``, ``_`` and ``-``."""
    name = os.path.basename(os.path.abspath(os.fspath(data)))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"
    return run_file(run, EVAL_PREFIX + slug)


def read_json(file: str) -> dict | None:
    """A JSON object from ``file``, or None when it is missing, unreadable or not an object."""
    try:
        with open(file, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(file: str, value) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write_text(file, json.dumps(value, indent=2, ensure_ascii=False))


# -- history.csv ---------------------------------------------------------------------------

HISTORY_TAIL = ("lr", "seconds", "elapsed")
"""The last columns of ``history.csv``, whatever metrics come before them."""


def read_history(file: str) -> list[dict]:
    """Rows of a ``history.csv`` as dicts of strings (empty list if the file does not exist)."""
    if not os.path.exists(file):
        return []
    with open(file, newline="") as fh:
        return list(csv.DictReader(fh))


def write_history(file: str, rows: list[dict]) -> None:
    """Write ``history.csv`` atomically: ``epoch``, the metrics in first-seen order, then
    :data:`HISTORY_TAIL`. Cells a row lacks (``val_*`` of an epoch that was not validated)
    stay empty."""
    fields = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in HISTORY_TAIL]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*fields, *HISTORY_TAIL], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(file, buf.getvalue())


def validated_rows(history: list[dict]) -> list[dict]:
    """The rows of ``history.csv`` whose epoch was validated (``val_loss`` not empty; see
    :attr:`catsdogs.config.TrainConfig.val_every`)."""
    return [r for r in history if r.get("val_loss")]


# -- timings.json --------------------------------------------------------------------------

TIMING_STAGES = ("start", "data", "setup", "fit", "save", "evaluate")
"""Clock marks of one ``train`` call, in order; see :func:`write_timings`."""


def write_timings(run: str, clock: dict[str, float], extra: dict | None = None) -> dict:
    """Write ``timings.json``: wall seconds between consecutive :data:`TIMING_STAGES` marks.

    Args:
        run: run folder.
        clock: stage name → ``time.perf_counter()`` seconds; every stage must be present.
        extra: more keys to write (a time-budget run's ``budget`` record).

    Returns:
        ``data_seconds`` (scan, deduplicate, split; 0 on resume), ``setup_seconds`` (datasets
        and model), ``fit_seconds`` (epochs of this call, with validation and checkpoints),
        ``save_seconds`` (``model.keras``), ``evaluate_seconds`` (test split, plots, report) and
        ``total_seconds`` (from ``start``: the command line sets it before importing
        TensorFlow), plus ``extra``.
    """
    stages = TIMING_STAGES
    out = {f"{b}_seconds": round(clock[b] - clock[a], 3)
           for a, b in zip(stages, stages[1:], strict=False)}
    out["total_seconds"] = round(clock[stages[-1]] - clock[stages[0]], 3)
    out.update(extra or {})
    write_json(run_file(run, TIMINGS_FILE), out)
    return out


# -- export.json ---------------------------------------------------------------------------

def file_sha256(file: str) -> str:
    """Hex SHA-256 of a file's bytes.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_export_info(run: str) -> dict:
    """``RUN/export.json`` as a dict (format → record dict), or ``{}`` when there is none.

    Raises:
        RunError: the file exists but is unreadable or not a catsdogs export record.
    """
    file = run_file(run, EXPORT_INFO)
    try:
        with open(file, encoding="utf-8") as fh:
            info = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{file}: unreadable ({exc})") from None
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise RunError(f"{file}: not a catsdogs export record (expected format → object)")
    return info


def record_export(run: str, fmt: str, record: dict) -> None:
    """Add or replace ``fmt``'s record in ``RUN/export.json`` (read-modify-write: two exports of
    one run at the same moment may keep only one record, which is fail-safe: an unrecorded
    export is simply not used).

    Raises:
        RunError: the existing ``export.json`` is unreadable.
    """
    info = read_export_info(run)
    info[fmt] = record
    write_json(run_file(run, EXPORT_INFO), info)


def export_status(run: str, fmt: str) -> tuple[str | None, str]:
    """Whether ``fmt``'s exported model can stand in for ``model.keras``.

    Returns:
        ``(path, "ok")`` when ``RUN/<file of fmt>`` exists, is byte-for-byte the file that was
        checked (SHA-256 in ``export.json``), and came from the current ``model.keras`` (its
        SHA-256 too); else ``(None, reason)``.

    Raises:
        RunError: ``export.json`` is unreadable.
    """
    exported = run_file(run, EXPORT_FILES[fmt])
    record = read_export_info(run).get(fmt)
    if not os.path.isfile(exported):
        return None, f"{exported} does not exist"
    if not record:
        return None, f"{exported} is not recorded in {EXPORT_INFO} (not made by catsdogs export)"
    model_path = run_file(run, MODEL_FILE)
    try:
        if record.get("sha256") != file_sha256(exported):
            return None, f"{exported} changed since it was exported and checked"
        if not os.path.isfile(model_path):
            return None, f"{model_path} does not exist"
        if record.get("model_sha256") != file_sha256(model_path):
            return None, f"{model_path} changed since {exported} was exported from it"
    except OSError as exc:
        return None, f"cannot read {exc.filename}: {exc.strerror}"
    return exported, "ok"
