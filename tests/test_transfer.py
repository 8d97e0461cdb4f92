"""Transfer learning (catsdogs.transfer + training): stage 1 trains only the head, stage 2 the
top of the backbone at a lower learning rate, batch-norm frozen; a crash in either stage
resumes at the right place; settings that cannot work fail before the scan; Grad-CAM, export
and predict work on a backbone run."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import photo, require_shared, run_cli

from catsdogs import api
from catsdogs.backbones import build_backbone
from catsdogs.config import make_config
from catsdogs.errors import ConfigError
from catsdogs.export import TOLERANCE, export_run
from catsdogs.models import BACKBONE_LAYER, build_model, load_model
from catsdogs.predict import Predictor
from catsdogs.runfolder import read_history
from catsdogs.training import check_config, compile_model, train
from catsdogs.transfer import fine_tune_config, freeze_backbone, unfreeze_top

SMALL = "mobilenet_v3_small"
EPOCHS, HEAD = 4, 2


def _weights_file(folder) -> str:
    """A backbone weights file the test writes itself (a randomly initialised backbone)."""
    file = str(folder / "pretrained.weights.h5")
    build_backbone(SMALL).save_weights(file)
    return file


def _transfer_config(data, out, weights, **kw):
    return make_config("transfer", data=str(data), out=str(out), model=SMALL, weights=weights,
                       image_size=32, epochs=EPOCHS, head_epochs=HEAD, batch_size=8,
                       fine_tune_fraction=0.3, **kw)


def _by_name(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()]
            for layer in model.get_layer(BACKBONE_LAYER).layers if layer.weights}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_freeze_then_unfreeze_the_top_trains_only_what_it_says(tmp_path):
    model = build_model(SMALL, 32, weights=_weights_file(tmp_path), dropout=0.0)
    cfg = make_config("transfer", model=SMALL, epochs=EPOCHS, head_epochs=HEAD)
    x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype("float32")
    y = (np.arange(16) % 2).astype("float32").reshape(-1, 1)
    start = _by_name(model)
    head = model.get_layer("logits").get_weights()[0].copy()

    assert freeze_backbone(model) == 576 + 1  # the head alone: 576 features → one logit
    compile_model(model, cfg, steps_per_epoch=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(_same(start[n], w) for n, w in _by_name(model).items())  # backbone frozen
    assert not np.array_equal(model.get_layer("logits").get_weights()[0], head)

    on, total = unfreeze_top(model, 0.3)
    assert 0 < on <= round(0.3 * total) and total == len(start)
    compile_model(model, fine_tune_config(cfg), steps_per_epoch=2)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = _by_name(model)
    names = list(after)
    cut = len(names) - round(0.3 * len(names))
    batch_norm = {layer.name for layer in model.get_layer(BACKBONE_LAYER).layers
                  if isinstance(layer, keras.layers.BatchNormalization)}
    assert all(_same(start[n], after[n]) for n in names[:cut])  # below the cut: frozen
    assert all(_same(start[n], after[n]) for n in batch_norm)  # statistics and scale kept
    changed = [n for n in names[cut:] if not _same(start[n], after[n])]
    assert changed and not set(changed) & batch_norm


def test_fine_tune_stage_learns_at_a_tenth_of_the_rate():
    cfg = make_config("transfer", epochs=8, head_epochs=2, learning_rate=1e-3)
    fine = fine_tune_config(cfg)
    assert fine.epochs == 6 and fine.head_epochs == 0
    assert fine.learning_rate == pytest.approx(1e-4)


def test_two_stage_run_in_the_run_folder(make_folder, tmp_path):
    data = make_folder(cats=16, dogs=16)
    weights = _weights_file(tmp_path)
    run = api.train(data, tmp_path / "run", "transfer", model=SMALL, weights=weights,
                    image_size=32, epochs=EPOCHS, head_epochs=HEAD, batch_size=8,
                    progress=False)
    rows = read_history(str(tmp_path / "run" / "history.csv"))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[:HEAD] == pytest.approx([1e-3] * HEAD)  # stage 1: constant
    assert max(lrs[HEAD:]) <= 1e-4 + 1e-9  # stage 2: a tenth, then decaying
    assert lrs[-1] < lrs[HEAD]
    assert all(r["val_loss"] for r in rows)  # the transfer preset validates every epoch
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert sum(float(r["seconds"]) for r in rows) <= timings["fit_seconds"]  # both stages
    assert run.config.weights == weights and run.metrics["n"] > 0
    assert (f"{EPOCHS} epochs ({HEAD} of them head only, then the top 100% of the backbone at "
            f"×0.1 the learning rate), starting from weights `pretrained.weights.h5`"
            ) in open(run.report).read()
    # The saved model: its batch-norm statistics are those of the weights file.
    saved = _by_name(load_model(str(tmp_path / "run" / "model.keras")))
    source = build_model(SMALL, 32, weights=weights)
    for layer in source.get_layer(BACKBONE_LAYER).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert _same(saved[layer.name], [np.array(w) for w in layer.get_weights()])
    assert not (tmp_path / "run" / "backup").exists()  # stage weights and backups removed


@pytest.mark.parametrize("crash_after", [1, 3])  # inside stage 1, inside stage 2
def test_a_crash_in_either_stage_resumes_where_it_stopped(make_folder, tmp_path, monkeypatch,
                                                          capsys, crash_after):
    data = make_folder(cats=12, dogs=12)
    cfg = _transfer_config(data, tmp_path / "run", _weights_file(tmp_path))
    real_end = keras.callbacks.BackupAndRestore.on_epoch_end

    def crash(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if epoch + 1 == crash_after:
            raise OSError("power cut")

    with monkeypatch.context() as m:
        m.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", crash)
        with pytest.raises(OSError, match="power cut"):
            train(cfg, progress=False)
    capsys.readouterr()
    api.train(out=tmp_path / "run", resume=True, progress=False)
    out = capsys.readouterr().out
    rows = read_history(str(tmp_path / "run" / "history.csv"))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))  # each epoch once
    assert ("Stage 1 (head only) was finished" in out) == (crash_after > HEAD)
    assert ("Stage 1: " in out) == (crash_after <= HEAD)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[:HEAD] == pytest.approx([1e-3] * HEAD) and max(lrs[HEAD:]) <= 1e-4 + 1e-9
    assert (tmp_path / "run" / "model.keras").exists()


def test_transfer_settings_that_cannot_work_fail_before_the_scan(tmp_path):
    missing = str(tmp_path / "no-photos-here")
    weights = _weights_file(tmp_path)
    for bad, match in ((dict(weights="none"), "needs pretrained weights"),
                       (dict(weights=weights, model="resnet"), "has no pretrained backbone"),
                       (dict(weights=weights, time_budget=5.0), "fixed number of epochs"),
                       (dict(weights=str(tmp_path / "nope.h5")), "no such weights file")):
        cfg = make_config("transfer", data=missing, out=str(tmp_path / "run"),
                          **{"model": SMALL, **bad})
        with pytest.raises(ConfigError, match=match):
            check_config(cfg)
    with pytest.raises(ConfigError, match="head_epochs must be 0 or fewer than epochs"):
        make_config("transfer", epochs=2, head_epochs=2)
    assert not (tmp_path / "run").exists()


def test_gradcam_export_and_predict_on_a_backbone_run(make_folder, tmp_path):
    data = make_folder(cats=12, dogs=12)
    run = str(tmp_path / "run")
    api.train(data, run, "quick", model=SMALL, image_size=48, epochs=1, batch_size=8,
              progress=False)
    explanation = api.load(run).explain(photo(1, (64, 64)))
    assert explanation.overlay.shape == (64, 64, 3) and explanation.overlay.dtype == np.uint8
    info = export_run(run, "tflite", verbose=False)  # raises unless within TOLERANCE
    assert info["max_abs_diff"] <= TOLERANCE
    keras_p = Predictor.from_run(run, engine="keras").predict_images([photo(0), photo(1)])
    lite_p = Predictor.from_run(run, engine="tflite").predict_images([photo(0), photo(1)])
    assert np.max(np.abs(keras_p - lite_p)) <= TOLERANCE


@pytest.mark.e2e
def test_mobilenet_v3_small_from_scratch_on_real_photos(tmp_path):
    pets = require_shared("PetImages")
    small = tmp_path / "pets"  # 100 real photos per class, linked (scanning all 25k is slow)
    for cls in ("Cat", "Dog"):
        (small / cls).mkdir(parents=True)
        for n in sorted(p.name for p in (pets / cls).iterdir())[:100]:
            (small / cls / n).symlink_to(pets / cls / n)
    run = tmp_path / "run"
    proc = run_cli("train", "--data", small, "--out", run, "--model", SMALL, "--weights",
                   "none", "--epochs", "2", "--image-size", "64", "--no-progress")
    assert "Model mobilenet_v3_small at 64 px" in proc.stdout
    assert (run / "model.keras").exists() and (run / "metrics.json").exists()
    assert (run / "report.md").read_text().count("mobilenet_v3_small") >= 1
