"""Metrics against values computed by hand."""

from __future__ import annotations

import pytest

from catsdogs.evaluate import compute_metrics


def test_metrics_hand_computed():
    # true:   cat cat cat cat dog dog dog dog dog dog
    # p(dog): .1  .4  .6  .2  .9  .8  .3  .7  .55 .45
    # pred:   cat cat dog cat dog dog cat dog dog cat   (threshold 0.5)
    y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    p = [0.1, 0.4, 0.6, 0.2, 0.9, 0.8, 0.3, 0.7, 0.55, 0.45]
    m = compute_metrics(y, p)
    # TN=3 FP=1 FN=2 TP=4
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    # ROC AUC = fraction of (dog, cat) pairs ranked correctly: dogs .9 .8 .7 beat all 4 cats
    # (12); .55 and .45 beat .1 .4 .2 (3 + 3); .3 beats .1 .2 (2) → 20 / 24.
    assert m["roc_auc"] == pytest.approx(20 / 24)
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 3 / 5, "recall": 3 / 4, "f1": 2 * 0.6 * 0.75 / 1.35, "support": 4})
    assert m["per_class"]["dog"]["support"] == 6
    assert m["n"] == 10 and m["threshold"] == 0.5


def test_threshold_and_single_class():
    m = compute_metrics([1, 1, 1], [0.2, 0.6, 0.9], threshold=0.7)
    assert m["confusion_matrix"] == [[0, 0], [2, 1]]
    assert m["roc_auc"] is None
    assert m["recall"] == pytest.approx(1 / 3)
