""""Neither a cat nor a dog" end to end on small synthetic data: training with --other (a pet
head), the threshold chosen on validation and saved, the `other` label in predict, the API and
export, evaluation of the held-out kind and of any folder, and a run trained without other
photos (the max-softmax baseline)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import photo, run_cli, save_photo
from PIL import Image

import catsdogs
from catsdogs.data.outliers import load_other_split, synthetic_outliers
from catsdogs.data.split import load_split, select
from catsdogs.ood import KEEP_PETS, ood_score
from catsdogs.predict import OTHER, classify_files
from catsdogs.runfolder import (
    METRICS_FILE,
    OOD_PLOT,
    OTHER_SPLITS_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    SPLITS_FILE,
    eval_dir,
    run_file,
)
from catsdogs.serve.app import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def make_other(root, kinds=("noise", "shapes", "checker"), n=24, seed=0):
    """A folder of non-pet photos, one sub-folder per synthetic kind."""
    for k, kind in enumerate(kinds):
        for i, image in enumerate(synthetic_outliers(n, 48, seed + k, kinds=(kind,))):
            path = root / "things" / kind / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    data = root / "photos"
    for label, name in ((0, "Cat"), (1, "Dog")):
        for i in range(40):
            save_photo(data / name / f"{i}.png", label, seed=i)
    other = make_other(root / "other")
    run = catsdogs.train(data=data, out=root / "run", preset="quick", image_size=32, epochs=4,
                         batch_size=16, other=other, other_synthetic=60, progress=False)
    return run, data, other


def test_other_photos_are_split_with_one_kind_held_out(other_run):
    run, _, other = other_run
    examples = load_other_split(run_file(run.path, OTHER_SPLITS_FILE))
    unseen = {e.kind for e in examples if e.split == "unseen"}
    assert unseen == {"things/shapes"}  # the last kind in sorted order
    assert {e.split for e in examples} == {"train", "val", "test", "unseen"}
    assert not any(e.kind == "things/shapes" for e in examples if e.split != "unseen")
    assert run.config.other == str(other.resolve())


def test_the_model_has_a_pet_head_and_the_threshold_keeps_99_percent_of_val_pets(other_run):
    run, _, _ = other_run
    predictor = run.predictor()
    outputs = predictor.outputs_prepared(np.zeros((2, 32, 32, 3), np.uint8))
    assert outputs.shape == (2, 2) and np.all((0 <= outputs) & (outputs <= 1))
    threshold = run.config.inference.ood_threshold
    assert threshold is not None and predictor.ood_threshold == threshold
    val = select(load_split(run_file(run.path, SPLITS_FILE)), "val")[0]
    scores = ood_score(classify_files(predictor, val, progress=False))
    assert np.mean(scores <= threshold) >= KEEP_PETS
    assert threshold in scores  # the smallest threshold that keeps them: one of their scores


def test_predict_answers_other_for_outliers_and_cat_or_dog_for_pets(other_run, tmp_path):
    run, data, _ = other_run
    unseen = synthetic_outliers(8, 48, seed=99, kinds=("shapes", "noise"))
    results = run.predict(list(unseen))
    assert sum(r.label == OTHER for r in results) >= 6
    assert all(r.ood_score > run.config.inference.ood_threshold for r in results
               if r.label == OTHER)
    pets = run.predict([data / "Cat", data / "Dog"])
    # a threshold chosen on 8 validation photos is rough: most pets, not 99 %, are kept
    assert sum(r.label in ("cat", "dog") for r in pets) >= 0.6 * len(pets)
    assert np.median([r.ood_score for r in pets]) < np.median([r.ood_score for r in results])
    assert all(0.0 <= r.ood_score <= 1.0 for r in pets)
    # the CLI prints the label and the score, and writes them to CSV and JSON
    noise = tmp_path / "noise.png"
    Image.fromarray(unseen[1]).save(noise)
    out = run_cli("predict", run.path, noise, "--json").stdout
    (row,) = json.loads(out)
    assert row["label"] == results[1].label and row["ood_score"] == pytest.approx(
        results[1].ood_score, abs=1e-5)
    csv_file = tmp_path / "p.csv"
    run_cli("predict", run.path, noise, "--csv", csv_file)
    assert csv_file.read_text().splitlines()[0].endswith("ood_score")


def test_the_api_says_other_with_its_score(other_run):
    run, _, _ = other_run
    buf = io.BytesIO()
    Image.fromarray(synthetic_outliers(1, 64, seed=5, kinds=("noise",))[0]).save(buf, "PNG")
    cat = io.BytesIO()
    Image.fromarray(photo(0, seed=7)).save(cat, "PNG")
    with TestClient(create_app(run.path)) as client:
        meta = client.get("/api/v1/model").json()
        assert meta["labels"] == ["cat", "dog", "other"]
        assert meta["ood_threshold"] == pytest.approx(run.config.inference.ood_threshold)
        answer = client.post("/api/v1/predict", files=[
            ("files", ("noise.png", buf.getvalue(), "image/png")),
            ("files", ("cat.png", cat.getvalue(), "image/png"))]).json()["results"]
    assert answer[0]["label"] == "other" and answer[0]["ood_score"] > meta["ood_threshold"]
    assert answer[1]["label"] == "cat" and answer[1]["ood_score"] <= meta["ood_threshold"]


def test_evaluation_reports_each_group_and_draws_the_histogram(other_run):
    run, _, _ = other_run
    ood = run.metrics["ood"]
    assert ood["method"].startswith("pet head")
    names = list(ood["groups"])
    assert any("held-out kind (things/shapes)" in n for n in names)
    assert any("unseen family (text)" in n for n in names)
    for g in ood["groups"].values():
        assert 0.0 <= g["auroc"] <= 1.0 and g["n_pets"] == 8
    assert ood["groups"][names[1]]["n_other"] == 24  # the whole held-out kind
    with open(run_file(run.path, REPORT_FILE)) as fh:
        report = fh.read()
    assert "## Neither a cat nor a dog" in report and "pet head" in report
    plot = Path(run_file(run_file(run.path, PLOTS_DIR), OOD_PLOT))
    assert plot.stat().st_size > 0 and Image.open(plot).format == "PNG"


def test_evaluate_other_data_measures_any_folder(other_run, tmp_path):
    run, _, _ = other_run
    folder = make_other(tmp_path / "more", kinds=("flat", "stripes"), n=10, seed=50)
    proc = run_cli("evaluate", run.path, "--other-data", folder / "things", "--no-progress")
    assert "AUROC=" in proc.stdout
    with open(run_file(eval_dir(run.path, folder / "things"), METRICS_FILE)) as fh:
        saved = json.load(fh)
    (group,) = saved["ood"]["groups"].values()
    assert group["n_other"] == 20 and group["n_pets"] == 8
    assert saved["source"]["other_folder"].endswith("things")


def test_a_run_without_other_photos_uses_the_max_softmax_baseline(tmp_path):
    data = tmp_path / "photos"
    for label, name in ((0, "Cat"), (1, "Dog")):
        for i in range(30):
            save_photo(data / name / f"{i}.png", label, seed=i)
    run = catsdogs.train(data=data, out=tmp_path / "run", preset="quick", image_size=32,
                         epochs=2, batch_size=16, progress=False)
    assert run.predictor().outputs_prepared(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 1)
    threshold = run.config.inference.ood_threshold
    assert threshold is not None
    ood = run.metrics["ood"]
    assert ood["method"].startswith("max-softmax baseline")
    assert ood["threshold"] == pytest.approx(threshold)
    assert all("other photos" not in name for name in ood["groups"])  # no other.csv
    with open(run_file(run.path, REPORT_FILE)) as fh:
        assert "max-softmax baseline" in fh.read()
    p = run.predict(photo(0, seed=3), tta=False)[0]
    assert p.ood_score == pytest.approx(1 - abs(2 * p.p_dog - 1), abs=1e-6)
    assert p.label == (OTHER if p.ood_score > threshold else ("dog" if p.p_dog >= 0.5 else "cat"))
