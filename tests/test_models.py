"""Models: the registry, the exact baseline architecture, any input size, the layers Grad-CAM
needs, and safe loading (a model file with Python code is refused, never executed)."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest

from catsdogs.errors import ConfigError, RunError
from catsdogs.explain import FEATURES_LAYER, LOGITS_LAYER
from catsdogs.models import WSConv2D, available_models, build_model, load_model


def test_baseline_is_the_tutorial_net():
    m = build_model("baseline", 64)
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds == ["InputLayer", "Resize", "Rescaling", "Conv2D", "MaxPooling2D", "Conv2D",
                     "MaxPooling2D", "Flatten", "Dense", "Dense", "Activation"]
    convs = [layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.activation.__name__) for c in convs] == \
        [(32, (3, 3), "relu")] * 2
    pools = [layer for layer in m.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert all(p.pool_size == (2, 2) and p.strides == (2, 2) for p in pools)
    # Hand-computed: conv 3*3*3*32+32 = 896; conv 3*3*32*32+32 = 9,248; 64→62→31→29→14:
    # flatten 14*14*32 = 6,272; dense 6,272*128+128 = 802,944; output 128+1 = 129.
    assert m.count_params() == 896 + 9_248 + 802_944 + 129
    assert m.get_layer("p_dog").activation.__name__ == "sigmoid"


@pytest.mark.parametrize("name", available_models())
def test_models_take_any_size_and_output_probabilities(name):
    m = build_model(name, 48)
    for h, w in ((48, 48), (100, 37)):
        out = np.asarray(m(np.random.randint(0, 256, (2, h, w, 3)).astype("float32")))
        assert out.shape == (2, 1) and out.dtype == np.float32
        assert np.all((out >= 0) & (out <= 1))
    # Grad-CAM's layers: a spatial feature map, and the single logit before the sigmoid
    features = m.get_layer(FEATURES_LAYER).output.shape
    assert len(features) == 4 and features[1] >= 1 and features[2] >= 1 and features[3] >= 1
    assert tuple(m.get_layer(LOGITS_LAYER).output.shape) == (None, 1)


def test_ws_conv_convolves_with_a_zero_mean_unit_norm_kernel():
    layer = WSConv2D(4, 3, padding="same", scale=2.0, name="ws")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    layer(x)
    gain = np.array([1.0, 0.5, 0.0, 3.0], "float32")
    layer.gain.assign(gain)
    layer.bias.assign(np.array([0.1, -0.2, 0.3, 0.0], "float32"))
    out = np.asarray(layer(x))
    used = np.asarray(layer.standardized_kernel())
    # zero mean per output channel, squared norm (gain · scale)²
    np.testing.assert_allclose(used.sum(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose((used ** 2).sum(axis=(0, 1, 2)), (gain * 2.0) ** 2, rtol=1e-4)
    # each output channel's 3·3·3 = 27 weights, standardized: (w − mean) / (std · √27)
    kernel = np.asarray(layer.kernel)
    expected = (kernel - kernel.mean(axis=(0, 1, 2))) \
        / (kernel.std(axis=(0, 1, 2)) * np.sqrt(27)) * gain * 2.0
    np.testing.assert_allclose(used, expected, atol=1e-6)
    plain = keras.layers.Conv2D(4, 3, padding="same")
    plain.build(x.shape)
    plain.set_weights([expected, np.asarray(layer.bias)])
    np.testing.assert_allclose(out, np.asarray(plain(x)), atol=1e-5)


def test_normalizer_free_resnet_starts_as_identity_blocks_and_round_trips(tmp_path):
    m = build_model("resnet", 48, norm="nf")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in m.layers)
    x = np.random.default_rng(1).integers(0, 256, (4, 48, 48, 3)).astype("float32")
    # s3b2 is not a stage's first block: its shortcut is its input, its branch starts at zero
    probe = keras.Model(m.inputs, [m.get_layer("s3b1_add").output,
                                   m.get_layer("s3b2_add").output])
    before, after = (np.asarray(t) for t in probe(x))
    np.testing.assert_array_equal(before, after)
    m.compile(optimizer=keras.optimizers.AdamW(0.01), loss="binary_crossentropy")
    m.fit(x, np.array([[0.0], [1.0], [0.0], [1.0]]), epochs=2, verbose=0)
    gains = np.asarray(m.get_layer("s3b2_b_conv").gain)
    assert np.any(gains != 0)  # trained, so the gain must survive the file
    m.save(tmp_path / "nf.keras")
    loaded = load_model(tmp_path / "nf.keras")
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("s3b2_b_conv").gain), gains)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(m(x)), atol=1e-6)


def test_normalizer_free_resnet_in_bfloat16_matches_float32():
    x = np.random.default_rng(2).integers(0, 256, (4, 48, 48, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    m32 = build_model("resnet", 48, norm="nf")
    for layer in m32.layers:  # non-zero branches, so every convolution counts
        if isinstance(layer, WSConv2D):
            layer.gain.assign(np.full(layer.gain.shape, 0.5, "float32"))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        m16 = build_model("resnet", 48, norm="nf")
    finally:
        keras.config.set_dtype_policy(previous)
    m16.set_weights(m32.get_weights())
    conv = m16.get_layer("s2b1_a_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    features = [keras.Model(m.inputs, m.get_layer("features").output) for m in (m32, m16)]
    f32, f16 = (np.asarray(f(x), "float32") for f in features)
    assert np.abs(f16 - f32).max() < 0.05 * np.abs(f32).max()


def test_unknown_norm():
    with pytest.raises(ConfigError, match="unknown norm"):
        build_model("resnet", 64, norm="layer")


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("nope", 64)


def test_lambda_model_is_refused_not_executed(tmp_path):
    """A ``.keras`` file whose Lambda layer creates a marker file when its code runs: safe
    loading refuses it without running the code; loaded unsafely (the control), it runs."""
    marker = tmp_path / "pwned"
    inputs = keras.Input((4,))
    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x * 2)[1]"
    outputs = keras.layers.Lambda(eval(code))(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model ran the code once
    with pytest.raises(RunError, match="refused to load"):
        load_model(str(path))
    assert not marker.exists()
    keras.saving.load_model(path, safe_mode=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"just text", b"PK\x03\x04 broken zip"])
def test_non_model_files_are_refused(tmp_path, content):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(RunError, match="model"):
        load_model(str(path))


def test_zip_that_is_not_a_keras_model(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(RunError, match="cannot load model"):
        load_model(str(path))
    with pytest.raises(RunError, match="no model file"):
        load_model(str(tmp_path / "missing.keras"))
