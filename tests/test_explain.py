"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): a known-answer check on a hand-built
model, shapes and ranges on real catsdogs models, the overlay, ``explain_to_file`` and
``catsdogs explain``."""

from __future__ import annotations

import io
import os

import keras
import numpy as np
import pytest
from conftest import photo, run_cli, save_photo
from PIL import Image

from catsdogs.data.preprocess import prepare
from catsdogs.errors import ImageError, RunError
from catsdogs.explain import (
    GradCAM,
    explain_image,
    explain_to_file,
    gradcam,
    overlay,
    png_bytes,
)
from catsdogs.models import available_models, build_model
from catsdogs.predict import Predictor


def cam_model(kernel: np.ndarray, w: np.ndarray, b: float = 0.0, size: int = 8) -> keras.Model:
    """Input (size, size, 3) → 1×1 conv "features" (fixed kernel, ReLU) → global average pool →
    Dense(1) "logits" (fixed weights) → sigmoid "p_dog". For this architecture Grad-CAM equals
    CAM (Zhou et al. 2016): alpha_k = w_k / (h·w), so the map is ReLU(Σ_k w_k A^k), rescaled."""
    inputs = keras.Input((size, size, 3), name="image")
    feats = keras.layers.Conv2D(kernel.shape[-1], 1, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feats)
    logits = keras.layers.Dense(1, name="logits")(pooled)
    out = keras.layers.Activation("sigmoid", name="p_dog")(logits)
    model = keras.Model(inputs, out)
    model.get_layer("features").set_weights([kernel[None, None], np.zeros(kernel.shape[-1])])
    model.get_layer("logits").set_weights([w.reshape(-1, 1), np.array([b])])
    return model


def expected_cam(image: np.ndarray, kernel: np.ndarray, w: np.ndarray, sign: float) -> np.ndarray:
    feats = np.maximum(image.astype(np.float64) @ kernel, 0.0)  # (h, w, k)
    cam = np.maximum((feats * (sign * w)).sum(-1), 0.0)
    return cam / cam.max() if cam.max() > 0 else cam


def test_gradcam_known_answer_matches_cam_formula():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 4)).astype(np.float32) / 100
    w = np.array([2.0, -1.0, 0.5, -3.0], np.float32)
    model = cam_model(kernel, w)
    image = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    for target, sign in (("dog", 1.0), ("cat", -1.0)):
        heat = gradcam(model, image, target=target)
        assert heat.shape == (8, 8) and heat.dtype == np.float32
        np.testing.assert_allclose(heat, expected_cam(image, kernel, w, sign), atol=1e-5)


def test_gradcam_localises_the_evidence():
    """A channel that fires only on bright red pixels, weighted towards "dog": the heatmap
    is hot exactly where the red square is."""
    kernel = np.array([[1.0], [-1.0], [-1.0]], np.float32) / 255
    model = cam_model(kernel, np.array([5.0], np.float32), size=16)
    image = np.zeros((16, 16, 3), np.uint8)
    image[2:6, 9:13, 0] = 255
    heat = gradcam(model, image)  # predicted class: dog (logit > 0)
    assert heat[2:6, 9:13].min() == pytest.approx(1.0)
    assert heat.sum() == pytest.approx(16.0)
    # explaining "cat" instead: nothing supports it → all zeros, not NaN
    assert np.array_equal(gradcam(model, image, target="cat"), np.zeros((16, 16), np.float32))


def test_gradcam_predicted_class_default():
    kernel = np.eye(3, dtype=np.float32) / 255
    w = np.array([1.0, -1.0, 0.0], np.float32)
    model = cam_model(kernel, w)
    reddish = np.zeros((8, 8, 3), np.uint8)
    reddish[..., 0], reddish[:4, :, 1] = 200, 100
    cam = GradCAM(model)
    heat, logit = cam(reddish)
    assert logit > 0  # dog
    np.testing.assert_allclose(heat, gradcam(model, reddish, "dog"), atol=1e-6)
    greenish = reddish[..., [1, 0, 2]]
    heat, logit = cam(greenish)
    assert logit < 0  # cat
    np.testing.assert_allclose(heat, gradcam(model, greenish, "cat"), atol=1e-6)
    with pytest.raises(ValueError):
        cam(reddish, target="horse")
    with pytest.raises(ValueError):
        cam(reddish[..., 0])


@pytest.mark.parametrize("name,size", [(name, 64) for name in available_models()])
def test_gradcam_on_catsdogs_models(name, size):
    model = build_model(name, image_size=size)
    feature_shape = model.get_layer("features").output.shape
    image = prepare(photo(0, (90, 70), 1), size)
    heat = gradcam(model, image)
    assert heat.shape == tuple(feature_shape[1:3])
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def test_gradcam_needs_features_and_logits_layers():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
    with pytest.raises(RunError, match="features"):
        GradCAM(model)


def test_overlay_shape_dtype_and_blend():
    image = photo(1, (50, 30), 2)  # (30, 50, 3)
    heat = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = overlay(image, heat)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    full = overlay(np.zeros_like(image), np.ones((2, 2), np.float32), alpha=1.0)
    assert tuple(full[0, 0]) == tuple(full[-1, -1])
    assert full[0, 0, 0] > 100 and full[0, 0, 2] < 50  # jet: hot = red
    cold = overlay(np.zeros_like(image), np.zeros((2, 2), np.float32), alpha=1.0)
    assert cold[0, 0, 2] > 100 and cold[0, 0, 0] < 50  # jet: cold = blue
    with pytest.raises(ValueError):
        overlay(image, heat, alpha=1.5)


def test_png_bytes_roundtrip_and_cap():
    image = photo(0, (300, 120), 3)
    back = np.asarray(Image.open(io.BytesIO(png_bytes(image))))
    assert np.array_equal(back, image)
    small = Image.open(io.BytesIO(png_bytes(image, max_side=100)))
    assert small.size == (100, 40)


def test_explain_to_file(tiny_run, tmp_path):
    src = save_photo(tmp_path / "dog.jpg", 1, seed=5, size=(90, 70))
    out = tmp_path / "out" / "heat.png"
    result = explain_to_file(str(tiny_run), str(src), str(out))
    assert result.path == str(src)
    pred = Predictor.from_run(str(tiny_run)).predict_sources([str(src)])[0]
    assert result.label == pred.label
    assert abs(result.p_dog - pred.p_dog) <= 1e-6
    assert result.p_cat == pytest.approx(1 - result.p_dog)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (90, 70) and img.mode == "RGB"
    assert result.overlay.shape == (70, 90, 3) and result.overlay.dtype == np.uint8
    assert result.heatmap.dtype == np.float32 and 0 <= result.heatmap.min() <= 1
    assert os.listdir(out.parent) == ["heat.png"]  # no temporary files left behind


def test_explain_to_file_bad_input_writes_nothing(tiny_run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    out = tmp_path / "heat.png"
    with pytest.raises(ImageError) as info:
        explain_to_file(str(tiny_run), str(bad), str(out))
    assert "not an image" in info.value.reason
    with pytest.raises(ImageError):
        explain_to_file(str(tiny_run), str(tmp_path / "missing.jpg"), str(out))
    with pytest.raises(RunError):
        explain_to_file(str(tmp_path / "norun"), str(bad), str(out))
    assert not out.exists()


def test_explain_image_max_side_keeps_heatmap(tiny_run):
    p = Predictor.from_run(str(tiny_run), engine="keras")
    cam = GradCAM(p.engine.model)
    image = photo(0, (400, 200), 4)
    full = explain_image(p, cam, image, "x")
    small = explain_image(p, cam, image, "x", max_side=100)
    assert full.overlay.shape == (200, 400, 3) and small.overlay.shape == (50, 100, 3)
    assert np.array_equal(full.heatmap, small.heatmap) and full.p_dog == small.p_dog


def test_cli_explain(tiny_run, tmp_path):
    src = save_photo(tmp_path / "cat.png", 0, seed=6, size=(64, 48))
    out = tmp_path / "cam.png"
    proc = run_cli("explain", tiny_run, src, "--out", out)
    assert out.exists() and Image.open(out).size == (64, 48)
    assert "cat.png" in proc.stdout and "P(dog)=" in proc.stdout
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"nope")
    proc = run_cli("explain", tiny_run, bad, "--out", tmp_path / "x.png", check=False)
    assert proc.returncode != 0 and "error:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()
