"""The OOD score, the rejection threshold chosen on validation, and the pets-vs-other metrics."""

from __future__ import annotations

import numpy as np
import pytest

from catsdogs.ood import choose_threshold, fpr_at_tpr, is_other, ood_metrics, ood_score


def test_ood_score_is_zero_when_certain_and_one_at_a_coin_flip():
    assert ood_score([0.0, 1.0, 0.5, 0.25, 0.9]) == pytest.approx([0, 0, 1, 0.5, 0.2])


def test_threshold_keeps_the_requested_share_of_pets():
    rng = np.random.default_rng(0)
    pets = rng.uniform(0, 1, 1000)
    t = choose_threshold(pets, keep=0.99)
    assert np.mean(pets <= t) >= 0.99
    assert np.mean(pets < t) < 0.99  # the smallest such threshold: one step lower keeps less
    assert choose_threshold([0.1, 0.2, 0.3, 0.4], keep=0.5) == 0.2
    assert choose_threshold([0.3], keep=0.99) == 0.3


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError):
        choose_threshold([])
    with pytest.raises(ValueError):
        choose_threshold([0.1], keep=0.0)


def test_is_other_is_strictly_above_the_threshold_and_never_without_one():
    assert is_other([0.1, 0.5, 0.6], 0.5).tolist() == [False, False, True]
    assert is_other([0.9, 1.0], None).tolist() == [False, False]


def test_metrics_on_separable_and_overlapping_scores():
    pets = np.linspace(0.0, 0.3, 100)
    other = np.linspace(0.5, 1.0, 50)
    m = ood_metrics(pets, other, threshold=choose_threshold(pets))
    assert m["auroc"] == 1.0 and m["fpr_at_95_tpr"] == 0.0
    assert m["other_rejected"] == 1.0 and m["pets_rejected"] <= 0.01
    assert (m["n_pets"], m["n_other"]) == (100, 50)
    same = ood_metrics(pets, pets, threshold=0.3)
    assert same["auroc"] == pytest.approx(0.5)
    assert same["other_rejected"] == 0.0


def test_fpr_at_95_tpr_counts_other_photos_accepted_as_pets():
    pets = np.arange(100) / 100          # 95 % of pets kept needs a threshold of 0.94
    other = np.array([0.5, 0.96, 0.97, 0.98])
    assert fpr_at_tpr(pets, other) == pytest.approx(0.25)  # only 0.5 is accepted


def test_metrics_need_both_groups():
    with pytest.raises(ValueError):
        ood_metrics([], [0.5], 0.5)
