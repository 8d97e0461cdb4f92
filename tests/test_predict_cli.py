"""Prediction on every image format and mode, the CLI's output formats and exit codes, and
evaluation of a run on another folder."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from conftest import photo, run_cli
from PIL import Image

from catsdogs.predict import Predictor, prepare
from catsdogs.run import load_model


def _formats(folder):
    """One file per accepted format/mode, plus two bad files."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo(1, (60, 44), seed=3))
    rgb.save(folder / "a.jpg")
    rgb.save(folder / "b.png")
    rgb.convert("RGBA").save(folder / "c.png")
    rgb.convert("P").save(folder / "d.gif")
    rgb.convert("L").save(folder / "e.jpg")
    rgb.convert("CMYK").save(folder / "f.jpg")
    rgb.save(folder / "g.webp")
    rgb.save(folder / "h.bmp")
    (folder / "z-broken.jpg").write_bytes(b"not an image at all")
    (folder / "z-empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(str(tiny_run))


def test_predict_every_format_and_mode(predictor, tmp_path):
    from catsdogs.predict import predict_paths

    folder = _formats(tmp_path / "in")
    results = list(predict_paths(predictor, [str(folder)]))
    by_name = {os.path.basename(r.path): r for r in results}
    assert len(results) == 10
    for name in "a.jpg b.png c.png d.gif e.jpg f.jpg g.webp h.bmp".split():
        r = by_name[name]
        assert r.error is None and r.label in ("cat", "dog") and 0 <= r.p_dog <= 1
        assert r.label == ("dog" if r.p_dog >= 0.5 else "cat")
    assert "not an image" in by_name["z-broken.jpg"].error
    assert by_name["z-empty.jpg"].error == "empty file (0 bytes)"
    # Lossless copies of the same pixels get the same probability.
    assert by_name["b.png"].p_dog == pytest.approx(by_name["h.bmp"].p_dog, abs=1e-6)


def test_predictor_matches_model_on_raw_image(tiny_run, predictor):
    """The shared path (prepare → model) agrees with the saved model fed the raw photo."""
    model = load_model(str(tiny_run / "model.keras"))
    img = photo(0, (90, 70), seed=11)
    raw = float(np.asarray(model(img[None].astype("float32")))[0, 0])
    shared = float(predictor.predict_images([img])[0])
    prepared = prepare(img, predictor.image_size)
    assert prepared.shape == (32, 32, 3) and prepared.dtype == np.uint8
    assert shared == pytest.approx(raw, abs=0.02)  # only the uint8 rounding differs


def test_tiny_model_learned_the_synthetic_task(predictor):
    imgs = [photo(label, seed=100 + i) for i in range(10) for label in (0, 1)]
    p = predictor.predict_images(imgs)
    acc = np.mean((p >= 0.5).astype(int) == np.array([0, 1] * 10))
    assert acc >= 0.8


def test_cli_predict_text_json_csv_and_exit_codes(tiny_run, tmp_path):
    folder = _formats(tmp_path / "in")
    proc = run_cli("predict", tiny_run, folder, check=False)
    assert proc.returncode == 1  # two files failed
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 10
    assert any("z-broken.jpg\tERROR\tnot an image" in line for line in lines)
    assert "2 of 10 files could not be classified" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_cli("predict", tiny_run, folder / "a.jpg", folder / "b.png", "--json")
    rows = json.loads(proc.stdout)
    assert [os.path.basename(r["path"]) for r in rows] == ["a.jpg", "b.png"]
    assert all(abs(r["p_dog"] + r["p_cat"] - 1) < 1e-9 for r in rows)

    out = tmp_path / "out.csv"
    proc = run_cli("predict", tiny_run, folder / "a.jpg", "--csv", out)
    (row,) = list(csv.DictReader(io.StringIO(out.read_text())))
    assert row["label"] in ("cat", "dog") and row["error"] == ""
    assert f"{float(row['p_dog']):.4f}" in proc.stdout


def test_cli_errors_are_one_line(tiny_run, tmp_path):
    proc = run_cli("predict", tmp_path / "no-run", "x.jpg", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    proc = run_cli("data", "check", tmp_path / "missing", check=False)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    (tmp_path / "onlycats" / "cats").mkdir(parents=True)
    Image.fromarray(photo(0)).save(tmp_path / "onlycats" / "cats" / "1.jpg")
    proc = run_cli("data", "check", tmp_path / "onlycats", check=False)
    assert proc.returncode == 1 and "only one class" in proc.stderr


@pytest.mark.parametrize("command", ["", "data", "data check", "data download", "train",
                                     "evaluate", "predict", "serve", "explain", "export"])
def test_every_command_has_help(command):
    proc = run_cli(*command.split(), "--help")
    assert "usage: catsdogs" in proc.stdout and "--help" in proc.stdout


def test_data_check_json_report(make_folder, tmp_path):
    root = make_folder(cats=3, dogs=3)
    (root / "Cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    report = tmp_path / "report.json"
    proc = run_cli("data", "check", root, "--report", report, "--no-progress")
    assert "SKIP" in proc.stdout and "bad.jpg" in proc.stdout
    data = json.loads(report.read_text())
    assert data["counts"] == {"cat": 3, "dog": 3} and data["n_skipped"] == 1
    assert data["skipped"][0]["path"].endswith("bad.jpg")


def test_evaluate_on_other_folder(tiny_run, make_folder, tmp_path):
    from catsdogs.evaluate import evaluate_run

    root = make_folder(cats=5, dogs=5, root=tmp_path / "holdout")
    (root / "Dog" / "junk.jpg").write_bytes(b"junk")
    m = evaluate_run(str(tiny_run), data=str(root), progress=False)
    out = tiny_run / "eval-holdout"
    assert m["n"] == 10 and m["source"]["skipped_files"] == 1
    assert json.loads((out / "metrics.json").read_text())["n"] == 10
    for name in ("confusion_matrix.png", "roc.png", "samples.png", "mistakes.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert "eval-holdout" in str(out) and (out / "report.md").exists()


def test_tta_averages_the_mirror_image(tiny_run):
    """With test-time flips P(dog) is the mean of the plain model's answers for the prepared
    image and its mirror image (flipped along the width axis), so both get the same P(dog);
    without, they differ."""
    plain = Predictor.from_run(str(tiny_run), engine="keras")
    tta = Predictor(plain.engine, plain.image_size, plain.threshold, tta=True)
    images = [photo(i % 2, (50 + i, 40), seed=20 + i) for i in range(6)]
    x = np.stack([prepare(im, plain.image_size) for im in images])
    mirror = np.ascontiguousarray(x[:, :, ::-1])
    p, p_m = plain.predict_prepared(x), plain.predict_prepared(mirror)
    assert np.max(np.abs(p - p_m)) > 1e-3  # the model itself is not mirror-symmetric
    np.testing.assert_allclose(tta.predict_prepared(x), (p + p_m) / 2, atol=1e-6)
    np.testing.assert_allclose(tta.predict_prepared(mirror), (p + p_m) / 2, atol=1e-6)
    np.testing.assert_allclose(tta.predict_images(images), (p + p_m) / 2, atol=1e-6)
