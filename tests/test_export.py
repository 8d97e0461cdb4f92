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
    with pytest.raises(RunError, match="no up-to-date model.tflite"):
        Predictor.from_run(str(run), engine="tflite")


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
    """Real photos when ../shared/data is there: the CLI gives the same P(dog) per engine."""
    samples = require_shared("samples")
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted(samples.glob("*.jpg"))[:4]:
        shutil.copy(p, folder / p.name)
    Image.fromarray(photo(1, (90, 60), seed=9)).save(folder / "synthetic.png")
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
    proc = run_cli("predict", run, folder / "synthetic.png")
    assert "tflite engine" in proc.stderr


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
