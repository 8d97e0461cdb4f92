"""Plots of a run, drawn with Matplotlib and Seaborn and written as PNG files (atomically).

All functions take a file path to write and return nothing; the ``Agg`` backend is used, so no
display is needed.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from sklearn.metrics import RocCurveDisplay  # noqa: E402

from catsdogs.constants import CLASSES  # noqa: E402
from catsdogs.io import atomic_path  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig, path: str) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_history(history: list[dict], path: str) -> None:
    """Training and validation accuracy and loss per epoch (two panels); validation points only
    at the epochs that were validated (``history.csv`` leaves the others empty)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss (binary cross-entropy)"))
    for ax, key, title in panels:
        for prefix, name in (("", "training"), ("val_", "validation")):
            rows = [r for r in history if r.get(prefix + key)]
            if rows:
                ax.plot([int(r["epoch"]) for r in rows], [float(r[prefix + key]) for r in rows],
                        marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    _save(fig, path)


def plot_confusion_matrix(cm: np.ndarray, path: str) -> None:
    """Confusion matrix heatmap: rows = true class, columns = predicted class (counts and row %)."""
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    labels = np.array([[f"{cm[i, j]}\n{share[i, j]:.1%}" for j in range(2)] for i in range(2)])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    sns.heatmap(share, annot=labels, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False,
                xticklabels=CLASSES, yticklabels=CLASSES, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    _save(fig, path)


def plot_roc(y_true: np.ndarray, p_dog: np.ndarray, path: str) -> None:
    """ROC curve (dog = positive) with its AUC, via scikit-learn's ``RocCurveDisplay``."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    if len(set(np.asarray(y_true).tolist())) == 2:
        RocCurveDisplay.from_predictions(y_true, p_dog, pos_label=1, name="model", ax=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_title("ROC curve (dog = positive)")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_image_grid(images: list[np.ndarray], titles: list[str], correct: list[bool], path: str,
                    suptitle: str, cols: int = 6) -> None:
    """A grid of photos, each titled, green when correct and red when wrong.

    Args:
        images: ``(H, W, 3) uint8`` photos.
        titles: one caption per photo.
        correct: one flag per photo.
    """
    n = max(1, len(images))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title, ok in zip(axes.flat, images, titles, correct, strict=False):
        ax.imshow(img)
        ax.set_title(title, fontsize=8, color="tab:green" if ok else "tab:red")
    if not images:
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(suptitle)
    _save(fig, path)


def plot_ood(groups: dict[str, np.ndarray], threshold: float | None, path: str) -> None:
    """Histograms of the OOD score (:func:`catsdogs.ood.ood_score`) per group of photos
    (``"cats and dogs"`` first, then each kind of other photo), each normalised to its own
    count, with the rejection threshold as a vertical line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0.0, 1.0, 41)
    for name, scores in groups.items():
        if len(scores):
            ax.hist(scores, bins=bins, histtype="step", linewidth=1.8, density=True,
                    label=f"{name} ({len(scores)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--",
                   label=f"threshold {threshold:.3f} (above: other)")
    ax.set_xlabel("OOD score = 1 − |2·P(dog) − 1|")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.set_title("Cats and dogs vs other photos")
    ax.legend(fontsize=8)
    _save(fig, path)
