"""Prediction (catsdogs.predict): every image format and mode, the shared decode → prepare →
engine path, inference settings (threshold, test-time flips, rejection), and path expansion."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import photo, save_every_format, save_photo

from catsdogs.data.preprocess import prepare
from catsdogs.errors import ConfigError
from catsdogs.models import load_model
from catsdogs.ood import ood_score
from catsdogs.predict import OTHER, Prediction, Predictor, expand_paths, predict_paths


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(str(tiny_run))


def test_predict_every_format_and_mode(predictor, tmp_path):
    folder = save_every_format(tmp_path / "in")
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


def test_from_run_overrides_the_runs_inference_settings(tiny_run):
    own = Predictor.from_run(str(tiny_run))
    assert own.settings.threshold == 0.5 and own.tta is False and own.engine_name == "keras"
    changed = Predictor.from_run(str(tiny_run), threshold=0.9, tta=True, engine="keras")
    assert (changed.threshold, changed.tta) == (0.9, True)
    x = np.stack([prepare(photo(1, seed=60), 32), prepare(photo(0, seed=61), 32)])
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    np.testing.assert_allclose(changed.predict_prepared(x),
                               (own.predict_prepared(x) + own.predict_prepared(mirrored)) / 2,
                               atol=1e-6)
    with pytest.raises(ConfigError):
        Predictor.from_run(str(tiny_run), threshold=2.0)
    with pytest.raises(ConfigError):
        Predictor.from_run(str(tiny_run), engine="gpu")


def test_labels_follow_the_threshold_and_the_rejection_threshold(predictor):
    assert [predictor.label(p) for p in (0.0, 0.4999, 0.5, 1.0)] == ["cat", "cat", "dog", "dog"]
    strict = Predictor(predictor.engine, predictor.image_size, threshold=0.9,
                       ood_threshold=0.5)
    # OOD score 1 − |2p − 1|: 0.2 → 0.4, 0.5 → 1.0, 0.7 → 0.6, 0.95 → 0.1
    assert [strict.label(p) for p in (0.2, 0.5, 0.7, 0.95)] == ["cat", OTHER, OTHER, "dog"]
    result = Prediction("x.jpg", label=OTHER, p_dog=0.7, ood_score=0.6)
    assert result.p_cat == pytest.approx(0.3)
    assert result.to_dict() == {"path": "x.jpg", "label": OTHER, "p_dog": 0.7,
                                "p_cat": pytest.approx(0.3), "ood_score": 0.6, "error": None}
    failed = Prediction("y.jpg", error="empty file (0 bytes)")
    assert failed.p_cat is None and failed.to_dict()["label"] is None


def test_rejection_threshold_from_the_run_settings(tiny_run, tmp_path):
    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=80 + i)) for i in range(8)]
    plain = Predictor.from_run(str(tiny_run)).predict_sources(paths)
    assert all(r.label in ("cat", "dog") for r in plain)  # no rejection threshold: never other
    scores = np.array([r.ood_score for r in plain])
    np.testing.assert_allclose(scores, ood_score([r.p_dog for r in plain]), atol=1e-6)
    cut = float(np.median(scores))
    rejected = Predictor.from_run(str(tiny_run), ood_threshold=cut).predict_sources(paths)
    assert [r.label == OTHER for r in rejected] == list(scores > cut)
    assert 0 < sum(r.label == OTHER for r in rejected) < len(paths)
    for before, after in zip(plain, rejected, strict=True):
        assert after.p_dog == pytest.approx(before.p_dog, abs=1e-6)
        if after.label != OTHER:
            assert after.label == before.label


def test_expand_paths_walks_folders_and_reports_missing_paths(tmp_path):
    save_photo(tmp_path / "b" / "2.png", 0)
    save_photo(tmp_path / "b" / "1.png", 1)
    save_photo(tmp_path / "b" / ".hidden" / "3.png", 1)
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "b" / "Thumbs.db").write_bytes(b"\0")
    single = save_photo(tmp_path / "single.png", 0)
    got = list(expand_paths([str(tmp_path / "b"), str(tmp_path / "nope"), str(single)]))
    assert got == [(str(tmp_path / "b" / "1.png"), None), (str(tmp_path / "b" / "2.png"), None),
                   (str(tmp_path / "nope"), "no such file or folder"), (str(single), None)]


def test_predict_paths_keeps_the_order_across_chunks(predictor, tmp_path):
    paths = [str(save_photo(tmp_path / f"{i:02d}.png", i % 2, seed=i)) for i in range(7)]
    paths.insert(3, str(tmp_path / "missing.png"))
    results = list(predict_paths(predictor, paths, chunk=2))
    assert [r.path for r in results] == paths
    assert results[3].error == "no such file or folder" and results[3].label is None
    p = predictor.predict_images([photo(i % 2, seed=i) for i in range(7)])
    got = [r.p_dog for r in results if r.error is None]
    np.testing.assert_allclose(got, p, atol=1e-6)
    assert os.path.basename(results[0].path) == "00.png"
