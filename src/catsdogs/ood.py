""""Neither a cat nor a dog": the out-of-distribution (OOD) score, the rejection threshold and
its metrics. No TensorFlow: everything here works on model outputs.

Two scores, by how the run was trained:

* with other photos (``--other``) the model has a pet head: a second sigmoid, P(pet), trained
  on cats and dogs (target 1) against the other photos and synthetic outliers (target 0), and
  the OOD score is ``1 − P(pet)``. The dog output also learns P(dog) = 0.5 on outliers (the
  uniform target of outlier exposure, Hendrycks, Mazeika & Dietterich, ICLR 2019,
  arXiv:1812.04606). A separate head is needed because with one sigmoid "no idea whether cat or
  dog" is the same output as "not a pet": single-output outlier exposure rejected only 16 % of
  the validation flower photos at 99 % of pets kept (docs/recipes.md);
* without, the maximum-softmax-probability baseline (Hendrycks & Gimpel, ICLR 2017,
  arXiv:1610.02136) for our single sigmoid: ``1 − |2·P(dog) − 1|`` (0: certain of cat or dog;
  1: P(dog) = 0.5).

Either way the threshold is chosen on the validation split to keep :data:`KEEP_PETS` of the
cat and dog photos.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

KEEP_PETS = 0.99
"""Share of validation cat and dog photos the rejection threshold keeps."""


def ood_score(outputs) -> np.ndarray:
    """OOD score of each photo, ``(n,) float64`` in [0, 1]; higher means less like a cat or a
    dog.

    Args:
        outputs: model outputs, ``(n,)`` P(dog), or ``(n, k)`` with P(dog) in column 0 and,
            for a model with a pet head, P(pet) in column 1.

    Returns:
        ``1 − P(pet)`` with a pet head; else the max-softmax score ``1 − |2·P(dog) − 1|``.
    """
    out = np.asarray(outputs, dtype=np.float64)
    out = out.reshape(len(out), -1) if out.ndim else out.reshape(1, 1)
    if out.shape[1] > 1:
        return 1.0 - out[:, 1]
    return 1.0 - np.abs(2.0 * out[:, 0] - 1.0)


def choose_threshold(pet_scores, keep: float = KEEP_PETS) -> float:
    """The OOD score above which a photo is called ``other``: the smallest value that keeps at
    least ``keep`` of ``pet_scores`` (validation cats and dogs) at or below it.

    Raises:
        ValueError: no scores, or ``keep`` outside (0, 1].
    """
    scores = np.sort(np.asarray(pet_scores, dtype=np.float64).reshape(-1))
    if scores.size == 0:
        raise ValueError("choose_threshold needs at least one validation photo")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    index = int(np.ceil(keep * scores.size)) - 1
    return float(scores[index])


def is_other(scores, threshold: float | None) -> np.ndarray:
    """``(n,) bool``: the photos whose OOD score is above ``threshold`` (none when it is None)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if threshold is None:
        return np.zeros(scores.shape, bool)
    return scores > threshold


def fpr_at_tpr(pet_scores, other_scores, tpr: float = 0.95) -> float:
    """Share of other photos accepted as pets when the threshold keeps ``tpr`` of the pets
    (FPR at 95 % TPR, pets = positives; Hendrycks & Gimpel 2017), from scikit-learn's
    ``roc_curve``."""
    y = np.r_[np.ones(len(pet_scores)), np.zeros(len(other_scores))]
    fpr, tprs, _ = roc_curve(y, -np.r_[pet_scores, other_scores])
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def ood_metrics(pet_scores, other_scores, threshold: float | None) -> dict:
    """Pets-vs-other metrics of one set of other photos.

    Args:
        pet_scores: OOD scores of cat and dog photos (``(n,)``).
        other_scores: OOD scores of non-pet photos (``(m,)``, ``m >= 1``).
        threshold: the run's saved threshold (:func:`choose_threshold`).

    Returns:
        ``auroc`` (other = positive, scikit-learn's ``roc_auc_score``), ``fpr_at_95_tpr``,
        ``other_rejected`` (share of other photos called ``other`` at ``threshold``),
        ``pets_rejected`` (share of pets wrongly called ``other``), ``n_pets``, ``n_other``.

    Raises:
        ValueError: no pet or no other photo.
    """
    pets = np.asarray(pet_scores, np.float64).reshape(-1)
    other = np.asarray(other_scores, np.float64).reshape(-1)
    if not pets.size or not other.size:
        raise ValueError("ood_metrics needs pet photos and other photos")
    y = np.r_[np.zeros(pets.size), np.ones(other.size)]
    return {"auroc": float(roc_auc_score(y, np.r_[pets, other])),
            "fpr_at_95_tpr": fpr_at_tpr(pets, other),
            "other_rejected": float(np.mean(is_other(other, threshold))),
            "pets_rejected": float(np.mean(is_other(pets, threshold))),
            "n_pets": int(pets.size), "n_other": int(other.size)}
