"""Models: the registry, the exact baseline architecture, any input size, the layers Grad-CAM
needs, and safe loading (a model file with Python code is refused, never executed)."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest

from catsdogs.errors import ConfigError, RunError
from catsdogs.explain import FEATURES_LAYER, LOGITS_LAYER
from catsdogs.models import available_models, build_model, load_model


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
