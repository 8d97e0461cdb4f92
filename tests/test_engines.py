"""Inference engines (catsdogs.engines): which engine a run gets (--engine auto prefers an
up-to-date float32 export; stale, changed or unrecorded exports are never used), the run's
test-time flips on every engine, thread safety, and the same answers from every engine."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import photo, require_shared
from PIL import Image

from catsdogs.engines import (
    KerasEngine,
    LiteRTEngine,
    OnnxEngine,
    load_engine,
    load_engine_file,
    load_run,
)
from catsdogs.errors import ConfigError, RunError
from catsdogs.evaluate import evaluate_run
from catsdogs.export import TOLERANCE
from catsdogs.predict import Predictor, predict_paths
from catsdogs.runfolder import EXPORT_INFO


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
    assert cfg["inference"]["tta"] is False  # the quick preset's
    cfg["inference"]["tta"] = True
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
    metrics = evaluate_run(str(run), progress=False)
    assert metrics["test_time_flips"] is True
    assert "test-time flips" in (run / "report.md").read_text()


def test_exported_engines_are_thread_safe(exported):
    """Several threads with different batch sizes get the same answers as one thread."""
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


def test_engines_share_predict_paths(exported, tmp_path):
    """An unreadable file is reported the same way whatever the engine."""
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    Image.fromarray(photo(0)).save(tmp_path / "ok.png")
    for engine in ("keras", "onnx", "tflite"):
        pred = Predictor.from_run(str(exported), engine=engine)
        res = {r.path.rsplit("/", 1)[-1]: r for r in predict_paths(pred, [str(tmp_path)])}
        assert "not an image" in res["bad.jpg"].error and res["ok.png"].label in ("cat", "dog")


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


def test_load_engine_errors(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown engine"):
        load_engine(str(tiny_run), "gpu")
    with pytest.raises(RunError, match="no such run folder"):
        load_engine(str(tmp_path / "missing"))
    with pytest.raises(RunError, match="cannot use the onnx engine.*catsdogs export"):
        load_engine(str(tiny_run), "onnx")  # never exported
    engine, cfg = load_engine(str(tiny_run), "keras")
    assert isinstance(engine, KerasEngine) and cfg.image_size == 32
    model, cfg = load_run(str(tiny_run))
    x = np.full((1, 32, 32, 3), 100, np.float32)
    np.testing.assert_allclose(np.ravel(engine(x)), np.ravel(model(x)), atol=1e-6)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RunError, match="cannot load ONNX model"):
        load_engine_file(str(bad), "onnx")
    with pytest.raises(RunError, match="cannot load LiteRT model"):
        load_engine_file(str(bad), "tflite")
