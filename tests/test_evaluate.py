"""Evaluation: metrics against values computed by hand, a run's test split (metrics,
predictions, plots, report, rejection of other photos) and another labelled folder."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from catsdogs.config import InferenceSettings
from catsdogs.evaluate import compute_metrics, evaluate_run
from catsdogs.report import format_metrics


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
    assert "ROC AUC=n/a" in format_metrics(m, title="x")


def test_format_metrics_one_line_summary():
    m = compute_metrics([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9])
    text = format_metrics(m, title="test split")
    assert text.startswith("test split: n=4  accuracy=0.7500  precision=0.6667  recall=1.0000")
    assert "ROC AUC=1.0000" in text and "[[1, 1], [0, 2]]" in text


def test_evaluate_the_test_split(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("metrics.json", "predictions.csv", "report.md"):
        (run / name).unlink()
    shutil.rmtree(run / "plots")
    m = evaluate_run(str(run), progress=False, settings=InferenceSettings(threshold=0.5))
    assert m["source"]["split"] == "test" and m["n"] == 8 and m["test_time_flips"] is False
    assert json.loads((run / "metrics.json").read_text()) == m
    with open(run / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == m["n"]
    assert sum(int(r["correct"]) for r in rows) == round(m["accuracy"] * m["n"])
    assert all(r["predicted"] == ("dog" if float(r["p_dog"]) >= 0.5 else "cat") for r in rows)
    for name in ("history.png", "confusion_matrix.png", "roc.png", "samples.png",
                 "mistakes.png", "ood.png"):
        assert (run / "plots" / name).stat().st_size > 1000, name
    # photos that are neither a cat nor a dog: synthetic ones, the run has no other photos
    ood = m["ood"]
    assert ood["threshold"] is None and ood["method"].startswith("max-softmax baseline")
    assert ood["groups"] and all(g["n_pets"] == m["n"] for g in ood["groups"].values())
    report = (run / "report.md").read_text()
    for needle in ("Preset `quick`", "| accuracy |", "Neither a cat nor a dog",
                   "plots/history.png", "tensorboard --logdir"):
        assert needle in report, needle
    assert "test split: n=8" in capsys.readouterr().out


def test_evaluate_on_other_folder(tiny_run, make_folder, tmp_path):
    root = make_folder(cats=5, dogs=5, root=tmp_path / "holdout")
    (root / "Dog" / "junk.jpg").write_bytes(b"junk")
    m = evaluate_run(str(tiny_run), data=str(root), progress=False)
    out = tiny_run / "eval-holdout"
    assert m["n"] == 10 and m["source"]["skipped_files"] == 1
    assert json.loads((out / "metrics.json").read_text())["n"] == 10
    for name in ("confusion_matrix.png", "roc.png", "samples.png", "mistakes.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert "eval-holdout" in str(out) and (out / "report.md").exists()
