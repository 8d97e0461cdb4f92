"""`catsdogs export` (ONNX, LiteRT, int8 LiteRT): the same P(dog) as the Keras model within
1e-4, the record in export.json, failed exports never kept, and predict with each --engine.
(Which engine a run gets, and stale exports: test_engines.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import photo, photos_of_sizes, run_cli
from PIL import Image

from catsdogs import export
from catsdogs.config import TrainConfig
from catsdogs.engines import LiteRTEngine
from catsdogs.errors import RunError
from catsdogs.export import TOLERANCE, ExportError, export_run, validation_photos
from catsdogs.predict import Predictor
from catsdogs.runfolder import EXPORT_INFO, FORMATS, QUANTIZED_FORMATS


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_exported_model_matches_keras(exported, fmt):
    keras_p = Predictor.from_run(str(exported), engine="keras")
    other = Predictor.from_run(str(exported), engine=fmt)
    assert other.engine_name == fmt and keras_p.engine_name == "keras"
    images = photos_of_sizes()
    expected = keras_p.predict_images(images)
    got = other.predict_images(images)
    assert got.shape == expected.shape == (len(images),) and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    # and the model is not trivially constant: the comparison means something
    assert np.ptp(expected) > 0.05
    # uniform noise at the model's input size, batch sizes 1 and 7 (the LiteRT input is resized)
    rng = np.random.default_rng(0)
    size = keras_p.image_size
    noise = rng.integers(0, 256, (7, size, size, 3), dtype=np.uint8)
    for batch in (noise[:1], noise):
        assert np.max(np.abs(other.predict_prepared(batch) - keras_p.predict_prepared(batch))) \
            <= TOLERANCE


def test_export_record(exported):
    info = json.loads((exported / EXPORT_INFO).read_text())
    assert set(info) == set(FORMATS)
    for fmt, rec in info.items():
        assert rec["file"] == FORMATS[fmt]
        assert (exported / rec["file"]).stat().st_size == rec["bytes"] > 10_000
        assert 0 <= rec["max_abs_diff"] <= TOLERANCE and rec["n_checked"] >= 8
        assert len(rec["model_sha256"]) == 64
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]  # no temp files left


def test_disagreeing_export_is_not_kept(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)

    class Off:
        def __init__(self, engine):
            self.engine = engine

        def __call__(self, images):
            return self.engine(images) + 10 * TOLERANCE

    real = export.load_engine_file
    monkeypatch.setattr(export, "load_engine_file", lambda path, fmt: Off(real(path, fmt)))
    with pytest.raises(ExportError, match="disagrees with model.keras"):
        export_run(str(run), "onnx", verbose=False)
    assert not (run / "model.onnx").exists() and not (run / EXPORT_INFO).exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".model.onnx")]


def test_export_errors(tmp_path):
    with pytest.raises(ExportError, match="unknown export format"):
        export_run(str(tmp_path), "pt")
    with pytest.raises(RunError, match="config.json: missing"):
        export_run(str(tmp_path), "onnx")


def test_cli_export_and_predict_engines(exported, tmp_path):
    """The command line: export, then the same P(dog) from every --engine."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(photos_of_sizes(5, seed=70)):
        Image.fromarray(im).save(folder / f"{i}.png")
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    (run / "model.onnx").unlink()
    proc = run_cli("export", run, "--format", "onnx")
    assert "max |ΔP(dog)|" in proc.stdout and (run / "model.onnx").exists()
    results = {}
    for engine in ("keras", "onnx", "tflite"):
        out = run_cli("predict", run, folder, "--json", "--engine", engine).stdout
        results[engine] = {r["path"]: r["p_dog"] for r in json.loads(out)}
    assert len(results["keras"]) == 5
    for engine in ("onnx", "tflite"):
        assert results[engine].keys() == results["keras"].keys()
        for path, p in results["keras"].items():
            assert abs(results[engine][path] - p) <= TOLERANCE, (engine, path)
    proc = run_cli("predict", run, folder / "0.png")
    assert "tflite engine" in proc.stderr
    proc = run_cli("predict", tmp_path / "run", folder, "--engine", "gpu", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_int8_export_is_checked_on_validation_accuracy_and_used_only_when_asked(exported,
                                                                              tmp_path):
    """`export --format tflite-int8`: kept with its validation accuracy recorded (recomputed
    here from the int8 engine itself), never chosen by --engine auto, used by --engine
    tflite-int8 in predict."""
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    proc = run_cli("export", run, "--format", "tflite-int8")
    assert "Validation accuracy" in proc.stdout and "--engine tflite-int8" in proc.stdout
    rec = json.loads((run / EXPORT_INFO).read_text())["tflite-int8"]
    assert rec["file"] == QUANTIZED_FORMATS["tflite-int8"] == "model.int8.tflite"
    assert (run / "model.int8.tflite").stat().st_size == rec["bytes"]
    # int8 weights: clearly smaller than the float32 LiteRT file
    assert rec["bytes"] < 0.6 * (run / "model.tflite").stat().st_size
    cfg = TrainConfig.load(str(run))
    images, labels = validation_photos(str(run), cfg.image_size)
    assert rec["n_checked"] == len(labels) > 0
    int8 = Predictor.from_run(str(run), engine="tflite-int8")
    keras_p = Predictor.from_run(str(run), engine="keras").predict_prepared(images)
    p = int8.predict_prepared(images)
    assert int8.engine_name == "tflite-int8"
    threshold = cfg.inference.threshold
    assert rec["val_accuracy"] == pytest.approx(np.mean((p >= threshold) == labels))
    assert rec["val_accuracy_keras"] == pytest.approx(np.mean((keras_p >= threshold) == labels))
    assert rec["max_abs_diff"] == pytest.approx(np.max(np.abs(p - keras_p)), abs=1e-6)
    assert Predictor.from_run(str(run)).engine_name == "tflite"  # auto: float32 only
    (run / "model.tflite").unlink()
    (run / "model.onnx").unlink()
    assert Predictor.from_run(str(run)).engine_name == "keras"
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo(1, (60, 50), seed=9)).save(folder / "a.png")
    out = run_cli("predict", run, folder, "--json", "--engine", "tflite-int8")
    (result,) = json.loads(out.stdout)
    assert result["p_dog"] == pytest.approx(
        float(int8.predict_images([np.asarray(Image.open(folder / "a.png").convert("RGB"))])[0]),
        abs=1e-6)
    assert "tflite-int8 engine" in run_cli("predict", run, folder, "--engine",
                                           "tflite-int8").stderr


def test_int8_export_that_loses_accuracy_is_not_kept(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)

    real_call = LiteRTEngine.__call__  # a "quantized model" that gets every photo wrong
    monkeypatch.setattr(LiteRTEngine, "__call__", lambda self, x: 1 - real_call(self, x))
    with pytest.raises(ExportError, match="misclassifies .* validation photos"):
        export_run(str(run), "tflite-int8", verbose=False)
    assert not (run / "model.int8.tflite").exists() and not (run / EXPORT_INFO).exists()
    monkeypatch.undo()
    (run / "splits.csv").unlink()
    with pytest.raises(ExportError, match="checked on the run's validation photos"):
        export_run(str(run), "tflite-int8", verbose=False)
    assert not (run / "model.int8.tflite").exists()
