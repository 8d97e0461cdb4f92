"""The run folder: where every file of a run lives, and how a trained model is loaded back.

Layout (``RUN/``): ``model.keras``, ``config.json``, ``splits.csv``, ``scan.json``,
``history.csv``, ``metrics.json``, ``predictions.csv``, ``report.md``, ``plots/``, and while
training ``backup/`` (Keras ``BackupAndRestore``) and ``checkpoints/best.weights.h5``.
"""

from __future__ import annotations

import os
import zipfile

import keras

from catsdogs import models  # noqa: F401 - registers the custom layers that load_model needs
from catsdogs.config import TrainConfig
from catsdogs.errors import RunError
from catsdogs.export import MODEL_FILE

RUN_FILES = ("model.keras", "config.json", "splits.csv", "history.csv", "metrics.json",
             "report.md")
"""Files a finished run folder contains (plus ``plots/``)."""


def is_run_folder(path: str) -> bool:
    """True when ``path`` holds a catsdogs ``config.json`` (a finished or resumable run)."""
    return os.path.isfile(os.path.join(path, "config.json"))


def load_model(path: str) -> keras.Model:
    """Load a ``.keras`` model file safely.

    Uses ``keras.saving.load_model(..., safe_mode=True, compile=False)``: a file with a
    ``Lambda`` layer (arbitrary Python code) is refused, never executed.

    Raises:
        RunError: missing file, not a ``.keras`` archive, or refused/unloadable content.
    """
    if not os.path.isfile(path):
        raise RunError(f"{path}: no model file (train the run first)")
    if not zipfile.is_zipfile(path):
        raise RunError(f"{path}: not a Keras model file (.keras is a zip archive)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad archives
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise RunError(f"{path}: refused to load: the model contains Python code (a Lambda "
                           "layer), which safe mode does not execute") from None
        raise RunError(f"{path}: cannot load model ({type(exc).__name__}: {text[:200]})") from None


def load_run(run_dir: str) -> tuple[keras.Model, TrainConfig]:
    """Load a finished run's model and config.

    Raises:
        RunError: not a run folder, or the model cannot be loaded.
    """
    if not os.path.isdir(run_dir):
        raise RunError(f"{run_dir}: no such run folder")
    config = TrainConfig.load(run_dir)
    return load_model(os.path.join(run_dir, MODEL_FILE)), config
