"""Evaluation: metrics (scikit-learn), plots and the Markdown report of a run.

``evaluate_run(RUN)`` scores the run's test split (written into ``RUN/``);
``evaluate_run(RUN, data=DIR)`` scores every readable photo of another labelled folder (written
into ``RUN/eval-<folder name>/``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re

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
from tqdm.auto import tqdm

from catsdogs import CLASSES, plots
from catsdogs.config import TrainConfig
from catsdogs.data.images import load_image
from catsdogs.data.pipeline import make_dataset
from catsdogs.data.scan import scan_folder, summary_lines
from catsdogs.data.split import load_split, select
from catsdogs.errors import display_path
from catsdogs.io import atomic_write_text
from catsdogs.predict import Predictor
from catsdogs.run import load_model


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


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"


def _write_predictions(path: str, paths: list[str], labels: list[int], probs, threshold) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "true", "predicted", "p_dog", "correct"])
    for p, y, q in zip(paths, labels, probs, strict=True):
        pred = int(q >= threshold)
        w.writerow([display_path(p), CLASSES[y], CLASSES[pred], f"{q:.6f}", int(pred == y)])
    atomic_write_text(path, buf.getvalue())


def _grids(paths, labels, probs, threshold, plot_dir, seed=0, n=18):
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
                          os.path.join(plot_dir, "samples.png"),
                          "Sample predictions (green = correct, red = wrong)")
    wrong = np.flatnonzero(preds != labels)
    worst = wrong[np.argsort(-confidence[wrong])][:n]
    plots.plot_image_grid(show(worst), [title(i) for i in worst], [False] * len(worst),
                          os.path.join(plot_dir, "mistakes.png"),
                          "Most confident mistakes")


def evaluate_run(run: str, data: str | None = None, *, model=None,
                 progress: bool = True) -> dict:
    """Score a run on its test split (``data=None``) or on another labelled folder.

    Writes ``metrics.json``, ``predictions.csv``, plots and ``report.md`` into ``run`` (test
    split) or ``run/eval-<name>`` (other folder), and returns the metrics.

    Raises:
        RunError: not a finished run folder. DataError: ``data`` is unusable.
    """
    cfg = TrainConfig.load(run)
    model = model if model is not None else load_model(os.path.join(run, "model.keras"))
    predictor = Predictor(model, cfg.image_size, cfg.threshold, tta=cfg.tta)
    scan_info = None
    if data is None:
        out_dir = run
        paths, labels = select(load_split(os.path.join(run, "splits.csv")), "test")
        source = {"split": "test", "splits_file": os.path.join(run, "splits.csv")}
    else:
        result = scan_folder(data, progress=progress)
        result.check_usable()
        for line in summary_lines(result):
            print(line)
        out_dir = os.path.join(run, f"eval-{_slug(os.path.basename(os.path.abspath(data)))}")
        os.makedirs(out_dir, exist_ok=True)
        result.write_json(os.path.join(out_dir, "scan.json"))
        paths = [p.path for p in result.photos]
        labels = [p.label for p in result.photos]
        source = {"folder": display_path(os.path.abspath(data)),
                  "skipped_files": len(result.skipped)}
        scan_info = result
    ds = make_dataset(paths, None, cfg.image_size, 64, cache=False)
    probs = np.concatenate([predictor.predict_prepared(x.numpy()) for x in
                            tqdm(ds, desc="evaluate", unit="batch", disable=not progress,
                                 leave=False)]) if paths else np.zeros(0)
    metrics = compute_metrics(labels, probs, cfg.threshold)
    metrics["test_time_flips"] = bool(cfg.tta)
    metrics["source"] = source
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2))
    _write_predictions(os.path.join(out_dir, "predictions.csv"), paths, labels, probs,
                       cfg.threshold)
    plot_dir = os.path.join(out_dir, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    from catsdogs.train import HISTORY_FILE, read_history

    history = read_history(os.path.join(run, HISTORY_FILE))
    if data is None and history:
        plots.plot_history(history, os.path.join(plot_dir, "history.png"))
    plots.plot_confusion_matrix(np.array(metrics["confusion_matrix"]),
                                os.path.join(plot_dir, "confusion_matrix.png"))
    plots.plot_roc(np.asarray(labels), probs, os.path.join(plot_dir, "roc.png"))
    _grids(paths, labels, probs, cfg.threshold, plot_dir, seed=cfg.seed)
    write_report(out_dir, cfg, metrics, history if data is None else [], scan_info)
    print(format_metrics(metrics, title=f"{'test split' if data is None else display_path(data)}"))
    print(f"Report: {os.path.join(out_dir, 'report.md')}")
    return metrics


def format_metrics(m: dict, title: str = "") -> str:
    """A short plain-text summary of :func:`compute_metrics` output."""
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    cm = m["confusion_matrix"]
    return (f"{title}: n={m['n']}  accuracy={m['accuracy']:.4f}  precision={m['precision']:.4f}  "
            f"recall={m['recall']:.4f}  F1={m['f1']:.4f}  ROC AUC={auc}\n"
            f"  confusion matrix (rows true cat/dog, columns predicted): {cm}")


def write_report(out_dir: str, cfg: TrainConfig, m: dict, history: list[dict], scan=None) -> None:
    """Write ``report.md``: settings, data, metrics table, per-class table and the plots."""
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    src = m["source"]
    where = (f"the run's test split ({m['n']} photos, read once)" if "split" in src
             else f"every readable photo in `{src['folder']}` ({m['n']} photos, "
                  f"{src['skipped_files']} files skipped)")
    flips = ("; P(dog) averaged over each photo and its mirror image (test-time flips)"
             if m.get("test_time_flips") else "")
    trained_at = (f" (trained at {' → '.join(f'{s} px' for s in cfg.train_sizes)})"
                  if cfg.train_sizes else "")
    lines = [f"# catsdogs report: `{os.path.basename(os.path.abspath(cfg.out or out_dir))}`", "",
             f"Preset `{cfg.preset}`: model `{cfg.model}` at {cfg.image_size}×{cfg.image_size} px"
             f"{trained_at}, {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} "
             f"lr {cfg.learning_rate} ({cfg.schedule}), augmentation `{cfg.augmentation}`, "
             f"seed {cfg.seed}.", "",
             f"Evaluated on {where}; dog is the positive class, threshold {m['threshold']}{flips}.",
             "",
             "| metric | value |", "| --- | --- |",
             f"| accuracy | {m['accuracy']:.4f} |", f"| precision | {m['precision']:.4f} |",
             f"| recall | {m['recall']:.4f} |", f"| F1 | {m['f1']:.4f} |",
             f"| ROC AUC | {auc} |", "",
             "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for name, v in m["per_class"].items():
        lines.append(f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{v['support']} |")
    if history:
        from catsdogs.train import validated_rows

        validated = validated_rows(history)
        text = (f"Trained {len(history)} epochs in {float(history[-1]['elapsed']) / 60:.1f} "
                f"minutes, validated after {len(validated)} of them")
        if validated:
            best = min(validated, key=lambda r: float(r["val_loss"]))
            text += (f"; best validation loss {float(best['val_loss']):.4f} at epoch "
                     f"{best['epoch']} (validation accuracy {float(best['val_accuracy']):.4f}); "
                     "those weights are the saved model")
        lines += ["", text + ".", "", "## Training curves", "",
                  "![training curves](plots/history.png)"]
    if scan is not None:
        lines += ["", "## Data", "", "```", *summary_lines(scan)[:60], "```"]
    lines += ["", "## Confusion matrix and ROC curve", "",
              "![confusion matrix](plots/confusion_matrix.png) ![ROC curve](plots/roc.png)", "",
              "## Sample predictions", "", "![samples](plots/samples.png)", "",
              "## Most confident mistakes", "", "![mistakes](plots/mistakes.png)", ""]
    atomic_write_text(os.path.join(out_dir, "report.md"), "\n".join(lines))
