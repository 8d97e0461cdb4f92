"""The Python API for notebooks: catsdogs.train → Run, catsdogs.load, Run.predict / evaluate /
explain / metrics / history, per-call inference settings, and old run folders."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import photo, save_photo
from PIL import Image

import catsdogs
from catsdogs.errors import ConfigError, RunError
from catsdogs.runfolder import (
    CONFIG_FILE,
    LOGS_DIR,
    METRICS_FILE,
    TIMINGS_FILE,
    eval_dir,
    read_json,
    run_file,
    write_json,
)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """A run trained through the public API on 30 synthetic photos per class."""
    root = tmp_path_factory.mktemp("api")
    data = root / "photos"
    for label, name in ((0, "Cat"), (1, "Dog")):
        for i in range(30):
            save_photo(data / name / f"{i}.png", label, seed=i)
    run = catsdogs.train(data=data, out=root / "run", preset="quick", image_size=32, epochs=2,
                         batch_size=16, tta=True, progress=False)
    # a rejection threshold chosen on 6 validation photos would call some cats "other" by
    # chance; these tests are about cat and dog (test_rejection.py tests the rejection)
    config = read_json(run_file(run.path, CONFIG_FILE))
    assert config["inference"]["ood_threshold"] is not None
    config["inference"]["ood_threshold"] = None
    write_json(run_file(run.path, CONFIG_FILE), config)
    return catsdogs.load(run.path), data


def test_train_returns_a_loaded_run(api_run):
    run, _ = api_run
    assert isinstance(run, catsdogs.Run)
    assert run.config.preset == "quick" and run.config.epochs == 2
    assert run.config.image_size == 32 and run.config.inference.tta is True
    with open(run_file(run.path, METRICS_FILE)) as fh:
        assert run.metrics == json.load(fh)
    assert run.metrics["n"] == 6 and 0.0 <= run.metrics["accuracy"] <= 1.0
    assert set(run.timings) >= {"fit_seconds", "evaluate_seconds", "total_seconds"}
    assert run_file(run.path, TIMINGS_FILE).endswith("timings.json")


def test_history_has_one_row_per_epoch_with_numbers(api_run):
    run, _ = api_run
    history = run.history
    rows = history.to_dict("records") if hasattr(history, "to_dict") else history
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(isinstance(r["loss"], float) and r["loss"] > 0 for r in rows)
    assert all(isinstance(r["val_accuracy"], float) for r in rows)


def test_tensorboard_logs_are_written(api_run):
    run, _ = api_run
    logs = run_file(run.path, LOGS_DIR)
    events = list(Path(logs).rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"train", "validation"}
    assert all(p.stat().st_size > 0 for p in events)


def test_predict_accepts_paths_folders_bytes_and_arrays(api_run, tmp_path):
    run, data = api_run
    cat = data / "Cat" / "0.png"
    buf = io.BytesIO()
    Image.fromarray(photo(1, seed=3)).save(buf, format="PNG")
    results = run.predict([cat, data / "Dog", buf.getvalue(), photo(0, seed=5), b"not a photo"])
    assert len(results) == 1 + 30 + 3
    assert results[0].path == str(cat)
    assert [r.path for r in results[-3:]] == ["bytes[2]", "array[3]", "bytes[4]"]
    assert results[-1].error and results[-1].label is None
    good = [r for r in results if r.error is None]
    assert all(r.label in ("cat", "dog") and 0.0 <= r.p_dog <= 1.0 for r in good)
    # the same photo as a path and as an array gets the same P(dog)
    as_array = run.predict(np.asarray(Image.open(cat).convert("RGB")))[0]
    assert as_array.p_dog == pytest.approx(results[0].p_dog, abs=1e-6)


def test_predict_settings_override_per_call(api_run):
    run, data = api_run
    photo_path = data / "Dog" / "1.png"
    p = run.predict(photo_path)[0].p_dog
    assert run.predict(photo_path, threshold=min(1.0, p + 0.01))[0].label == "cat"
    assert run.predict(photo_path, threshold=max(0.0, p - 0.01))[0].label == "dog"
    flipped = run.predict(photo_path, tta=False)[0].p_dog
    mirror = run.predict(np.ascontiguousarray(np.asarray(Image.open(photo_path))[:, ::-1]),
                         tta=False)[0].p_dog
    assert p == pytest.approx((flipped + mirror) / 2, abs=1e-5)  # the run's tta=True
    with pytest.raises(ConfigError):
        run.predict(photo_path, threshold=1.5)
    with pytest.raises(ConfigError):
        run.predict(photo_path, engine="nonsense")


def test_evaluate_with_overrides_and_on_another_folder(api_run, tmp_path):
    run, data = api_run
    strict = run.evaluate(progress=False, threshold=1.0)
    assert strict["threshold"] == 1.0 and strict["confusion_matrix"][1][1] == 0
    other = tmp_path / "other photos"
    shutil.copytree(data, other)
    metrics = run.evaluate(other, progress=False)
    assert metrics["n"] == 60
    with open(run_file(eval_dir(run.path, other), METRICS_FILE)) as fh:
        assert json.load(fh)["n"] == 60
    assert eval_dir(run.path, other).endswith("eval-other-photos")
    run.evaluate(progress=False)  # restore the run's own test metrics
    assert run.metrics["threshold"] == 0.5


def test_explain_returns_and_writes_a_heatmap(api_run, tmp_path):
    run, data = api_run
    out = tmp_path / "heat.png"
    ex = run.explain(data / "Cat" / "2.png", out=out)
    assert ex.label == run.predict(data / "Cat" / "2.png")[0].label
    assert ex.overlay.shape == (40, 48, 3) and ex.overlay.dtype == np.uint8
    assert 0.0 <= ex.heatmap.min() and ex.heatmap.max() <= 1.0
    assert Image.open(out).size == (48, 40)


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        catsdogs.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="config.json"):
        catsdogs.load(tmp_path / "empty")


def test_train_needs_out_and_data():
    with pytest.raises(ConfigError, match="out"):
        catsdogs.train(data="x")
    with pytest.raises(ConfigError, match="data"):
        catsdogs.train(out="y")
    with pytest.raises(ConfigError, match="unknown setting"):
        catsdogs.train(data="x", out="y", learning_rte=0.1)


def test_an_old_run_folder_still_loads_and_predicts(api_run, tmp_path):
    """Run folders written before the inference settings moved keep threshold and tta at the
    top level of config.json."""
    run, data = api_run
    old = tmp_path / "old-run"
    shutil.copytree(run.path, old)
    with open(old / CONFIG_FILE) as fh:
        raw = json.load(fh)
    inference = raw.pop("inference")
    raw.update(threshold=0.25, tta=inference["tta"])
    (old / CONFIG_FILE).write_text(json.dumps(raw))
    loaded = catsdogs.load(old)
    assert loaded.config.inference.threshold == 0.25 and loaded.config.inference.tta is True
    result = loaded.predict(data / "Cat" / "0.png")[0]
    assert result.p_dog == pytest.approx(run.predict(data / "Cat" / "0.png")[0].p_dog, abs=1e-6)
    assert result.label == ("dog" if result.p_dog >= 0.25 else "cat")
