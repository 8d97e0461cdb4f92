"""Evaluation: metrics (scikit-learn), predictions, plots and the report of a run.

``evaluate_run(RUN)`` scores the run's test split (written into ``RUN/``);
``evaluate_run(RUN, data=DIR)`` scores every readable photo of another labelled folder (written
into ``RUN/eval-<folder name>/``).
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from catsdogs import plots
from catsdogs.budget import BudgetPlan
from catsdogs.config import InferenceSettings, TrainConfig
from catsdogs.constants import CLASSES
from catsdogs.data.images import load_image
from catsdogs.data.scan import ScanResult, scan_folder, summary_lines
from catsdogs.data.split import load_split, select
from catsdogs.engines import KerasEngine, load_config, load_engine
from catsdogs.errors import RunError, display_path
from catsdogs.io import atomic_write_text
from catsdogs.predict import Predictor, classify_files
from catsdogs.rejection import evaluate_rejection, format_rejection
from catsdogs.report import format_metrics, write_report
from catsdogs.runfolder import (
    CONFUSION_PLOT,
    HISTORY_FILE,
    HISTORY_PLOT,
    METRICS_FILE,
    MISTAKES_PLOT,
    PLAN_FILE,
    PLOTS_DIR,
    PREDICTIONS_FILE,
    REPORT_FILE,
    ROC_PLOT,
    SAMPLES_PLOT,
    SCAN_FILE,
    SPLITS_FILE,
    TIMINGS_FILE,
    eval_dir,
    read_history,
    read_json,
    run_file,
    write_json,
)


def compute_metrics(y_true, p_dog, threshold: float = 0.5) -> dict:
    """Binary classification metrics, dog = positive class, computed with scikit-learn.

    Args:
        y_true: ``(n,)`` int labels, 0 = cat, 1 = dog.
        p_dog: ``(n,)`` float P(dog).
        threshold: P(dog) at or above which the prediction is dog.

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``roc_auc`` (None when only one class is
        present), ``confusion_matrix`` (rows = true cat/dog, columns = predicted cat/dog),
        ``per_class`` {cat, dog: precision, recall, f1, support}, ``n`` and ``threshold``.
    """
    y_true = np.asarray(y_true, dtype=int).reshape(-1)
    p_dog = np.asarray(p_dog, dtype=float).reshape(-1)
    y_pred = (p_dog >= threshold).astype(int)
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], zero_division=0)
    both = len(np.unique(y_true)) == 2
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision_score(y_true, y_pred, pos_label=1, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, pos_label=1, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, pos_label=1, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, p_dog)) if both else None,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
        "per_class": {name: {"precision": float(prec[i]), "recall": float(rec[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(CLASSES)},
        "n": int(len(y_true)),
        "threshold": float(threshold),
    }


def _write_predictions(file: str, paths: list[str], labels: list[int], probs, threshold) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "true", "predicted", "p_dog", "correct"])
    for p, y, q in zip(paths, labels, probs, strict=True):
        pred = int(q >= threshold)
        w.writerow([display_path(p), CLASSES[y], CLASSES[pred], f"{q:.6f}", int(pred == y)])
    atomic_write_text(file, buf.getvalue())


def _grids(paths, labels, probs, threshold, plot_dir, seed=0, n=18):
    """The sample-predictions and most-confident-mistakes image grids."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    preds = (probs >= threshold).astype(int)
    confidence = np.where(preds == 1, probs, 1 - probs)

    def show(idx):
        return [load_image(paths[i]) for i in idx]

    def title(i):
        return f"true {CLASSES[labels[i]]}\npred {CLASSES[preds[i]]} (P(dog)={probs[i]:.2f})"

    sample = rng.choice(len(paths), size=min(n, len(paths)), replace=False)
    plots.plot_image_grid(show(sample), [title(i) for i in sample],
                          [bool(preds[i] == labels[i]) for i in sample],
                          run_file(plot_dir, SAMPLES_PLOT),
                          "Sample predictions (green = correct, red = wrong)")
    wrong = np.flatnonzero(preds != labels)
    worst = wrong[np.argsort(-confidence[wrong])][:n]
    plots.plot_image_grid(show(worst), [title(i) for i in worst], [False] * len(worst),
                          run_file(plot_dir, MISTAKES_PLOT),
                          "Most confident mistakes")


def _test_split(run: str) -> tuple[list[str], list[int], dict]:
    """The run's test split: paths, labels and the ``source`` record for ``metrics.json``."""
    paths, labels = select(load_split(run_file(run, SPLITS_FILE)), "test")
    return paths, labels, {"split": "test", "splits_file": run_file(run, SPLITS_FILE)}


def _other_folder(data: str, out_dir: str, progress: bool
                  ) -> tuple[list[str], list[int], dict, ScanResult]:
    """Every readable photo of another labelled folder (scanned, reported in ``out_dir``)."""
    result = scan_folder(data, progress=progress)
    result.check_usable()
    for line in summary_lines(result):
        print(line)
    os.makedirs(out_dir, exist_ok=True)
    result.write_json(run_file(out_dir, SCAN_FILE))
    source = {"folder": display_path(os.path.abspath(data)),
              "skipped_files": len(result.skipped)}
    return ([p.path for p in result.photos], [p.label for p in result.photos], source, result)


def _predictor(run: str, cfg: TrainConfig, model, settings: InferenceSettings) -> Predictor:
    """The given model, or the run's model by ``settings.engine`` (``auto`` means the Keras
    model here: evaluation is the reference an export is checked against), with ``settings``'
    threshold and test-time flips."""
    if model is not None:
        engine = KerasEngine(model)
    else:
        engine = load_engine(run, "keras" if settings.engine == "auto" else settings.engine)[0]
    return Predictor(engine, cfg.image_size, settings.threshold, tta=settings.tta,
                     ood_threshold=settings.ood_threshold)


def evaluate_run(run: str, data: str | None = None, *, model=None, progress: bool = True,
                 settings: InferenceSettings | None = None) -> dict:
    """Score a run on its test split (``data=None``) or on another labelled folder.

    Writes ``metrics.json``, ``predictions.csv``, plots and ``report.md`` into ``run`` (test
    split) or ``run/eval-<name>`` (other folder), and returns the metrics. On the test split
    the metrics also hold ``ood``: how well photos that are neither a cat nor a dog are
    rejected (:func:`catsdogs.rejection.evaluate_rejection`).

    Args:
        run: a finished run folder.
        data: another labelled folder to score instead of the test split.
        model: the run's Keras model when already in memory (else it is loaded, safe mode).
        progress: show a progress bar.
        settings: threshold, test-time flips and engine (default: the run's own).

    Raises:
        RunError: not a finished run folder. DataError: ``data`` is unusable.
    """
    cfg = load_config(run)
    settings = settings or cfg.inference
    predictor = _predictor(run, cfg, model, settings)
    scan = None
    if data is None:
        out_dir = run
        paths, labels, source = _test_split(run)
    else:
        out_dir = eval_dir(run, data)
        paths, labels, source, scan = _other_folder(data, out_dir, progress)
    outputs = classify_files(predictor, paths, progress)
    probs = outputs[:, 0]
    metrics = compute_metrics(labels, probs, settings.threshold)
    metrics["test_time_flips"] = bool(settings.tta)
    metrics["source"] = source
    _write_predictions(run_file(out_dir, PREDICTIONS_FILE), paths, labels, probs,
                       settings.threshold)
    history = read_history(run_file(run, HISTORY_FILE)) if data is None else []
    _plots(run_file(out_dir, PLOTS_DIR), paths, labels, probs, metrics, history, cfg.seed)
    if data is None:
        metrics["ood"] = evaluate_rejection(run, cfg, predictor, outputs,
                                            run_file(out_dir, PLOTS_DIR), progress)
    write_json(run_file(out_dir, METRICS_FILE), metrics)
    if data is None:
        refresh_report(run)
    else:
        write_report(out_dir, cfg, metrics, history, scan)
    print(format_metrics(metrics, title="test split" if data is None else display_path(data)))
    if data is None:
        print(format_rejection(metrics["ood"]))
    print(f"Report: {run_file(out_dir, REPORT_FILE)}")
    return metrics


def refresh_report(run: str) -> None:
    """Write the run's ``report.md`` again from its files (``config.json``, ``metrics.json``,
    ``history.csv``, and ``plan.json`` and ``timings.json`` when they exist), e.g. once
    ``timings.json`` knows how long the whole ``train`` command took.

    Raises:
        RunError: no ``metrics.json`` (the run was never evaluated).
    """
    metrics = read_json(run_file(run, METRICS_FILE))
    if metrics is None:
        raise RunError(f"{run}: no {METRICS_FILE}; evaluate the run first")
    cfg = load_config(run)
    plan = BudgetPlan.load(run) if os.path.exists(run_file(run, PLAN_FILE)) else None
    write_report(run, cfg, metrics, read_history(run_file(run, HISTORY_FILE)), None, plan,
                 read_json(run_file(run, TIMINGS_FILE)))


def _plots(plot_dir: str, paths, labels, probs, metrics: dict, history: list[dict],
           seed: int) -> None:
    """Every plot of an evaluation into ``plot_dir``."""
    os.makedirs(plot_dir, exist_ok=True)
    if history:
        plots.plot_history(history, run_file(plot_dir, HISTORY_PLOT))
    plots.plot_confusion_matrix(np.array(metrics["confusion_matrix"]),
                                run_file(plot_dir, CONFUSION_PLOT))
    plots.plot_roc(np.asarray(labels), probs, run_file(plot_dir, ROC_PLOT))
    _grids(paths, labels, probs, metrics["threshold"], plot_dir, seed=seed)
