"""The Python API: train a run, load it back, and use it from a notebook or a script.

::

    import catsdogs
    run = catsdogs.train(data="PetImages", out="runs/pets", preset="fast")
    run = catsdogs.load("runs/pets")
    run.predict(["cat.jpg", "photos/"])        # [Prediction(path, label, p_dog, error), ...]
    run.predict([array], threshold=0.6, tta=False)
    run.evaluate()                             # the test split again → metrics dict
    run.evaluate(data="other-photos/")         # → runs/pets/eval-other-photos/
    run.explain("dog.jpg").overlay             # Grad-CAM, (H, W, 3) uint8
    run.metrics, run.history, run.config

The ``catsdogs`` command line is a thin layer over these functions.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from catsdogs.budget import BudgetPlan
from catsdogs.config import InferenceSettings, TrainConfig, make_config
from catsdogs.data.images import load_image
from catsdogs.distributed import find_cluster
from catsdogs.engines import load_config
from catsdogs.errors import ConfigError, ImageError, RunError
from catsdogs.evaluate import evaluate_run, refresh_report
from catsdogs.explain import Explanation, GradCAM, explain_image, write_png
from catsdogs.models import available_models, describe_model
from catsdogs.predict import Prediction, Predictor, predict_paths
from catsdogs.rejection import calibrate, evaluate_other_folder
from catsdogs.runfolder import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    PLAN_FILE,
    REPORT_FILE,
    TIMINGS_FILE,
    read_history,
    read_json,
    run_file,
    write_json,
    write_timings,
)
from catsdogs.training import train as train_model

Source = str | os.PathLike | bytes | np.ndarray
"""A photo for :meth:`Run.predict`: a file or folder path, a file's bytes, or a decoded
``(H, W, 3) uint8`` RGB array."""


class Run:
    """A run folder, with its model loaded on first use.

    Args:
        run_dir: the run folder (``config.json`` must exist; the model is needed only by
            :meth:`predict`, :meth:`evaluate` and :meth:`explain`).

    Raises:
        RunError: no such folder, or no readable ``config.json`` in it.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = os.fspath(run_dir)
        self.config: TrainConfig = load_config(self.path)
        """The run's settings (``config.json``)."""
        self._predictors: dict[tuple, Predictor] = {}
        self._cam: GradCAM | None = None

    def __repr__(self) -> str:
        return f"Run({self.path!r}, preset={self.config.preset!r}, model={self.config.model!r})"

    @property
    def metrics(self) -> dict | None:
        """The test metrics (``metrics.json``), or None before the run was evaluated."""
        return read_json(run_file(self.path, METRICS_FILE))

    @property
    def report(self) -> str:
        """Path of the run's ``report.md``."""
        return run_file(self.path, REPORT_FILE)

    @property
    def timings(self) -> dict | None:
        """Wall seconds of each stage of the last ``train`` call (``timings.json``)."""
        return read_json(run_file(self.path, TIMINGS_FILE))

    @property
    def history(self):
        """``history.csv``: one row per epoch, numbers as floats (``epoch`` an int; ``None`` in
        the ``val_*`` cells of epochs that were not validated). A pandas ``DataFrame`` when
        pandas is installed, else a list of dicts."""
        rows = [{k: _number(k, v) for k, v in r.items()}
                for r in read_history(run_file(self.path, HISTORY_FILE))]
        try:  # optional: a DataFrame is what notebook users expect, but not a requirement
            import pandas
        except ImportError:
            return rows
        return pandas.DataFrame(rows)

    def predictor(self, **overrides) -> Predictor:
        """The run's :class:`~catsdogs.predict.Predictor` with inference settings overridden
        (``threshold``, ``tta``, ``engine``; ``None`` keeps the run's); cached per settings.

        Raises:
            RunError: the model cannot be loaded. ConfigError: a bad setting.
        """
        settings = self.config.inference.with_overrides(**overrides)
        key = dataclasses.astuple(settings)
        if key not in self._predictors:
            self._predictors[key] = Predictor.from_run(self.path, settings)
        return self._predictors[key]

    def predict(self, sources: Source | Sequence[Source], *, threshold: float | None = None,
                tta: bool | None = None, engine: str | None = None) -> list[Prediction]:
        """Classify photos: paths (folders are searched), file contents or decoded arrays.

        Args:
            sources: one source or a list of them (see :data:`Source`).
            threshold, tta, engine: inference settings for this call (default: the run's).

        Returns:
            One :class:`~catsdogs.predict.Prediction` per photo, in order; an unreadable file
            gets ``error`` set (its ``label`` and ``p_dog`` are None). Arrays are named
            ``array[i]`` and byte strings ``bytes[i]``, ``i`` their index in ``sources``.
        """
        single = isinstance(sources, str | os.PathLike | bytes | np.ndarray)
        items = [sources] if single else list(sources)
        predictor = self.predictor(threshold=threshold, tta=tta, engine=engine)
        return list(_predict_items(predictor, items))

    def evaluate(self, data: str | os.PathLike | None = None, *, progress: bool = True,
                 other_data: str | os.PathLike | None = None, **overrides) -> dict:
        """Score the run on its test split (``data=None``) or on another labelled folder, and
        write metrics, predictions, plots and report (see :func:`catsdogs.evaluate.evaluate_run`);
        or, with ``other_data``, measure how well the photos of that folder of non-pet photos
        are rejected as "neither a cat nor a dog" (``RUN/eval-<name>/metrics.json``).

        Args:
            data: a labelled cat/dog folder instead of the test split.
            progress: progress bars.
            other_data: a folder of non-pet photos (``data`` is then ignored).
            **overrides: inference settings for this call (``threshold``, ``tta``, ``engine``,
                ``ood_threshold``; default: the run's).

        Returns:
            The metrics dict (accuracy, precision, recall, f1, roc_auc, confusion_matrix, ood,
            …), or with ``other_data`` the rejection metrics.

        Raises:
            RunError: not a finished run. DataError: ``data`` or ``other_data`` is unusable.
        """
        settings = self.config.inference.with_overrides(**overrides)
        if other_data is not None:
            return evaluate_other_folder(self.path, os.fspath(other_data),
                                         self.predictor(**overrides), progress)
        return evaluate_run(self.path, None if data is None else os.fspath(data),
                            progress=progress, settings=settings)

    def explain(self, image: str | os.PathLike | bytes | np.ndarray,
                out: str | os.PathLike | None = None) -> Explanation:
        """Grad-CAM of one photo (:mod:`catsdogs.explain`), always with the Keras model.

        Args:
            image: a photo path, its bytes, or a decoded ``(H, W, 3) uint8`` array.
            out: also write the overlay there as a PNG.

        Raises:
            ImageError: unreadable photo. RunError: the model cannot be loaded or explained.
        """
        predictor = self.predictor(engine="keras")
        if self._cam is None:
            self._cam = GradCAM(predictor.engine.model, lock=predictor.engine.lock)
        decoded, name = _decode(image, "array")
        result = explain_image(predictor, self._cam, decoded, name)
        if out is not None:
            write_png(os.fspath(out), result.overlay)
        return result


def _number(key: str, value: str):
    """A ``history.csv`` cell as a number (``None`` when empty)."""
    if value in ("", None):
        return None
    return int(value) if key == "epoch" else float(value)


def _decode(source, name: str) -> tuple[np.ndarray, str]:
    """A decoded ``(H, W, 3) uint8`` photo and its name, from a path, bytes or an array.

    Raises:
        ImageError: unreadable file, or an array that is not ``(H, W, 3) uint8``.
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[-1] != 3 or source.dtype != np.uint8:
            raise ImageError(name, f"expected an (H, W, 3) uint8 RGB array, got "
                                   f"{source.shape} {source.dtype}")
        return source, name
    if isinstance(source, bytes):
        return load_image(source, name=name), name
    return load_image(source), os.fspath(source)


def _predict_items(predictor: Predictor, items: list) -> Iterator[Prediction]:
    """Predictions for a mixed list of paths, bytes and arrays, in order; runs of paths go
    through :func:`catsdogs.predict.predict_paths` (folders expanded, 64 photos a batch)."""
    paths: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            paths.append(os.fspath(item))
            continue
        yield from predict_paths(predictor, paths)
        paths = []
        name = f"{'array' if isinstance(item, np.ndarray) else 'bytes'}[{i}]"
        try:
            image, _ = _decode(item, name)
        except ImageError as exc:
            yield Prediction(name, error=exc.reason)
            continue
        yield predictor.prediction(name, predictor.outputs_images([image])[0])
    yield from predict_paths(predictor, paths)


def _calibrate(run: str, model, progress: bool) -> None:
    """Choose the rejection threshold of a just-trained model (``model``), or of a resumed run
    that has none yet (``model`` None)."""
    saved = load_config(run)
    if model is None and saved.inference.ood_threshold is not None:
        return
    predictor = (Predictor(model, saved.image_size, tta=saved.inference.tta)
                 if model is not None else Predictor.from_run(run, engine="keras"))
    calibrate(run, predictor, progress)


def train(data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          preset: str = "default", *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, evaluate: bool = True, started: float | None = None,
          workers: str | None = None, worker_index: int = 0, **settings) -> Run:
    """Train a model into a new run folder and evaluate it once on its test split.

    Args:
        data: labelled photo folder (``Cat/`` and ``Dog/`` sub-folders, or ``cat.N.jpg`` /
            ``dog.N.jpg`` files); not needed with ``resume``.
        out: the run folder to create (or to resume).
        preset: ``default``, ``fast``, ``quick`` or ``baseline`` (:data:`catsdogs.config.PRESETS`).
        resume: continue an interrupted run from its last completed epoch (its own
            ``config.json`` is used; ``data``, ``preset`` and ``settings`` are ignored).
        overwrite: delete an existing run folder first.
        progress: progress bars (else one line per epoch).
        evaluate: evaluate on the test split at the end (metrics, plots, report).
        started: ``time.perf_counter()`` when the caller started (the command line: before
            importing TensorFlow); a time budget counts from it. Default: now.
        **settings: any :class:`~catsdogs.config.TrainConfig` field (``epochs=5``,
            ``image_size=128``, ``time_budget=10`` minutes, …; ``epochs`` alone trains exactly
            that many epochs, ``time_budget=0`` too), and ``threshold`` / ``tta`` for its
            inference settings.

    Returns:
        The finished :class:`Run` (on a worker other than the chief: the run folder the
        chief writes, which may be on another machine).

    Raises:
        ConfigError: a missing ``out``/``data`` or a bad setting. DataError: an unusable photo
        folder. RunError: the run folder exists (without ``resume``/``overwrite``) or cannot be
        resumed; ``TrainingInterrupted`` on Ctrl-C (resume it with ``resume=True``).
    """
    if out is None:
        raise ConfigError("out (the run folder to create) is required")
    if not resume and not data:
        raise ConfigError("data (the labelled photo folder) is required unless resume=True "
                          "continues an existing run")
    for key in ("other", "weights"):  # paths stay valid when resumed from another folder
        if settings.get(key) and settings[key] not in ("none", "imagenet"):
            settings[key] = os.path.abspath(os.fspath(settings[key]))
    cfg = make_config(preset, data=data and os.path.abspath(os.fspath(data)),
                      out=os.fspath(out), **settings)
    clock = {"start": time.perf_counter() if started is None else started}
    cluster = find_cluster(workers, worker_index)
    model = train_model(cfg, resume=resume, overwrite=overwrite, progress=progress, clock=clock,
                        cluster=cluster)
    if cluster and not cluster.is_chief:
        return Run(cfg.out)
    _calibrate(cfg.out, model, progress)
    if evaluate:
        evaluate_run(cfg.out, model=model, progress=progress)
    if model is not None:  # None: only the evaluation of a finished training was left
        clock["evaluate"] = time.perf_counter()
        _finish_timings(cfg.out, clock, evaluate)
    return Run(cfg.out)


def _finish_timings(run: str, clock: dict[str, float], evaluated: bool) -> None:
    """Write ``timings.json`` (with a time-budget run's record, also added to ``config.json``
    and the report) and print the summary line."""
    plan = BudgetPlan.load(run) if os.path.exists(run_file(run, PLAN_FILE)) else None
    extra = {}
    if plan is not None:
        # Budget used: up to the last epoch (counted across resumed processes) plus what came
        # after it in this one.
        used = plan.spent_seconds + clock["evaluate"] - clock["fit"]
        extra["budget"] = {**plan.summary(), "used_seconds": round(used, 1),
                           "left_seconds": round(plan.budget_seconds - used, 1)}
        raw = read_json(run_file(run, CONFIG_FILE)) or {}
        write_json(run_file(run, CONFIG_FILE), {**raw, "budget": extra["budget"]})
    t = write_timings(run, clock, extra)
    if plan is not None and evaluated:
        refresh_report(run)
    print(f"Done in {t['total_seconds']:.0f} s: data {t['data_seconds']:.0f} s, "
          f"training {t['fit_seconds']:.0f} s, evaluation {t['evaluate_seconds']:.0f} s"
          + (f", {t['budget']['left_seconds']:.0f} s of the budget left" if plan else "")
          + f" → {run_file(run, TIMINGS_FILE)}")


def models() -> Iterator[dict]:
    """Every model :func:`train` can build (``model=…``), described one at a time as it is
    built: name, default size, parameters, FLOPs per photo and pretrained weights
    (:func:`catsdogs.models.describe_model`)."""
    for name in available_models():
        yield describe_model(name)


def load(run_dir: str | os.PathLike) -> Run:
    """Open a run folder (see :class:`Run`).

    Raises:
        RunError: no such folder, or no readable ``config.json`` in it.
    """
    return Run(run_dir)


def iter_predict(run: Run, paths: Iterable[str], **overrides) -> Iterator[Prediction]:
    """Classify files and folders one result at a time (for long listings: the command line
    prints each line as it comes)."""
    return predict_paths(run.predictor(**overrides), paths)


__all__ = ["Run", "train", "load", "iter_predict", "Prediction", "Explanation", "TrainConfig",
           "InferenceSettings", "RunError"]
