"""`catsdogs export` (ONNX, LiteRT) and the exported-model engines of predict/serve: the same
P(dog) as the Keras model within 1e-4, stale exports never used, failed exports never kept."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import photo, require_shared, run_cli
from PIL import Image

from catsdogs.errors import RunError
from catsdogs.export import EXPORT_INFO, FORMATS, TOLERANCE, ExportError, export_run
from catsdogs.predict import KerasEngine, LiteRTEngine, OnnxEngine, Predictor, predict_paths


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """A private copy of the tiny run with both exports (the shared run stays Keras-only)."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_run, run)
    for fmt in FORMATS:
        export_run(str(run), fmt, verbose=False)
    return run


def _images(n=12, seed=5):
    """Photos of several sizes and both classes, (H, W, 3) uint8."""
    sizes = [(48, 40), (31, 77), (200, 120), (32, 32)]
    return [photo(i % 2, sizes[i % len(sizes)], seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_exported_model_matches_keras(exported, fmt):
    keras_p = Predictor.from_run(str(exported), engine="keras")
    other = Predictor.from_run(str(exported), engine=fmt)
    assert other.engine_name == fmt and keras_p.engine_name == "keras"
    images = _images()
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


def test_auto_engine_prefers_export_and_ignores_stale(exported, tmp_path):
    assert isinstance(Predictor.from_run(str(exported)).engine, LiteRTEngine)
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    (run / "model.tflite").unlink()
    assert isinstance(Predictor.from_run(str(run)).engine, OnnxEngine)
    # model.keras changed since the export (e.g. trained further): its hash no longer matches
    info = json.loads((run / EXPORT_INFO).read_text())
    for rec in info.values():
        rec["model_sha256"] = "0" * 64
    (run / EXPORT_INFO).write_text(json.dumps(info))
    shutil.copy(exported / "model.tflite", run / "model.tflite")
    assert isinstance(Predictor.from_run(str(run)).engine, KerasEngine)
    with pytest.raises(RunError, match="catsdogs export"):
        Predictor.from_run(str(run), engine="onnx")
    with pytest.raises(RunError, match="model.keras changed since"):
        Predictor.from_run(str(run), engine="tflite")


def test_changed_or_unrecorded_export_file_is_not_used(exported, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    shutil.copy(run / "model.onnx", run / "model.tflite")  # not the file that was checked
    assert isinstance(Predictor.from_run(str(run)).engine, OnnxEngine)
    with pytest.raises(RunError, match="model.tflite changed since it was exported"):
        Predictor.from_run(str(run), engine="tflite")
    (run / EXPORT_INFO).write_text("[1, 2]")  # not a record: warn, fall back to Keras
    assert isinstance(Predictor.from_run(str(run)).engine, KerasEngine)
    assert "export.json: not a catsdogs export record" in caplog.text
    with pytest.raises(RunError, match="export.json: not a catsdogs export record"):
        Predictor.from_run(str(run), engine="onnx")
    (run / EXPORT_INFO).unlink()
    with pytest.raises(RunError, match="not recorded in export.json"):
        Predictor.from_run(str(run), engine="onnx")


def test_tta_setting_of_the_run_is_used_by_every_engine(exported, tmp_path):
    """A run whose config says ``tta`` gets test-time flips in predict, serve and evaluate, with
    the same P(dog) from every engine."""
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["tta"] = True
    (run / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(3)
    size = cfg["image_size"]
    x = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    plain = Predictor.from_run(str(exported), engine="keras")
    want = (plain.predict_prepared(x) + plain.predict_prepared(x[:, :, ::-1])) / 2
    for engine in ("keras", "onnx", "tflite"):
        pred = Predictor.from_run(str(run), engine=engine)
        assert pred.tta
        assert np.max(np.abs(pred.predict_prepared(x) - want)) <= TOLERANCE
    from catsdogs.evaluate import evaluate_run

    metrics = evaluate_run(str(run), progress=False)
    assert metrics["test_time_flips"] is True
    assert "test-time flips" in (run / "report.md").read_text()


def test_exported_engines_are_thread_safe(exported):
    """Several threads with different batch sizes get the same answers as one thread."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    size = Predictor.from_run(str(exported), engine="keras").image_size
    batches = [rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for n in (1, 3, 8, 2) * 4]
    for engine in ("onnx", "tflite"):
        pred = Predictor.from_run(str(exported), engine=engine)
        serial = [pred.predict_prepared(b) for b in batches]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(pred.predict_prepared, batches))
        for a, b in zip(serial, parallel, strict=True):
            np.testing.assert_array_equal(a, b)


def test_disagreeing_export_is_not_kept(tiny_run, tmp_path, monkeypatch):
    import catsdogs.predict as predict

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)

    class Off:
        def __init__(self, engine):
            self.engine = engine

        def __call__(self, images):
            return self.engine(images) + 10 * TOLERANCE

    real = predict.load_engine_file
    monkeypatch.setattr(predict, "load_engine_file", lambda path, fmt: Off(real(path, fmt)))
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
    for i, im in enumerate(_images(5, seed=70)):
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


def test_real_photos_same_p_dog_on_every_engine(exported):
    """Full-size real photos (../shared/data/samples): decode + resize + each engine."""
    samples = sorted(str(p) for p in require_shared("samples").glob("*.jpg"))
    assert samples
    by_engine = {}
    for engine in ("keras", "onnx", "tflite"):
        pred = Predictor.from_run(str(exported), engine=engine)
        by_engine[engine] = np.array([r.p_dog for r in predict_paths(pred, samples)])
    for engine in ("onnx", "tflite"):
        assert np.max(np.abs(by_engine[engine] - by_engine["keras"])) <= TOLERANCE


def test_engines_share_predict_paths(exported, tmp_path):
    """An unreadable file is reported the same way whatever the engine."""
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    Image.fromarray(photo(0)).save(tmp_path / "ok.png")
    for engine in ("keras", "onnx", "tflite"):
        pred = Predictor.from_run(str(exported), engine=engine)
        res = {r.path.rsplit("/", 1)[-1]: r for r in predict_paths(pred, [str(tmp_path)])}
        assert "not an image" in res["bad.jpg"].error and res["ok.png"].label in ("cat", "dog")


def test_serve_uses_export_and_matches_keras(exported):
    """The HTTP API answers with the exported engine (reported in /api/v1/model) and the same
    P(dog) as the Keras model; Grad-CAM heatmaps still work (they use model.keras)."""
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from catsdogs.serve.app import create_app

    images = _images(4, seed=40)
    files = []
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        files.append(("files", (f"{i}.png", buf.getvalue(), "image/png")))
    expected = Predictor.from_run(str(exported), engine="keras").predict_images(images)
    for engine in ("auto", "onnx"):
        with TestClient(create_app(str(exported), engine=engine)) as client:
            meta = client.get("/api/v1/model").json()
            assert meta["engine"] == ("tflite" if engine == "auto" else engine)
            res = client.post("/api/v1/predict?explain=true", files=files)
            assert res.status_code == 200
            items = res.json()["results"]
            got = np.array([r["p_dog"] for r in items])
            assert np.max(np.abs(got - expected)) <= TOLERANCE
            assert all(r["heatmap_png_base64"] for r in items)


def test_int8_export_is_checked_on_validation_accuracy_and_used_only_when_asked(exported,
                                                                              tmp_path):
    """`export --format tflite-int8`: kept with its validation accuracy recorded (recomputed
    here from the int8 engine itself), never chosen by --engine auto, used by --engine
    tflite-int8 in predict."""
    from catsdogs.config import TrainConfig
    from catsdogs.export import QUANTIZED_FORMATS, validation_photos

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
    assert rec["val_accuracy"] == pytest.approx(np.mean((p >= cfg.threshold) == labels))
    assert rec["val_accuracy_keras"] == pytest.approx(np.mean((keras_p >= cfg.threshold) == labels))
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
    import catsdogs.predict as predict

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)

    real_call = predict.LiteRTEngine.__call__  # a "quantized model" that gets every photo wrong
    monkeypatch.setattr(predict.LiteRTEngine, "__call__", lambda self, x: 1 - real_call(self, x))
    with pytest.raises(ExportError, match="misclassifies .* validation photos"):
        export_run(str(run), "tflite-int8", verbose=False)
    assert not (run / "model.int8.tflite").exists() and not (run / EXPORT_INFO).exists()
    monkeypatch.undo()
    (run / "splits.csv").unlink()
    with pytest.raises(ExportError, match="checked on the run's validation photos"):
        export_run(str(run), "tflite-int8", verbose=False)
    assert not (run / "model.int8.tflite").exists()
