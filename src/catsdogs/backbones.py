"""Keras Applications backbones (https://keras.io/api/applications/) and their weights.

A :class:`Backbone` names a Keras Applications constructor, the input range it expects and the
file name of its ImageNet weights without the classifier ("no top"), exactly as Keras' own
download code spells it, so :func:`resolve_weights` can look in Keras' cache before anything
touches the network. :mod:`catsdogs.models` registers every entry of :data:`BACKBONES` as a
model with a new binary head.

ImageNet weights are offline-first: ``imagenet`` means the file in Keras' cache
(:func:`keras_cache_dir`); when it is missing, Keras downloads it as usual if its server
answers within :data:`PROBE_TIMEOUT_SECONDS`, and otherwise :func:`resolve_weights` fails at
once with one line naming the file and the folder it should be in.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
from keras import layers

from catsdogs.errors import ConfigError

WEIGHTS_CHOICES = ("none", "imagenet")
"""Named values of ``--weights``; anything else is a path to a weights file."""

PROBE_TIMEOUT_SECONDS = 5.0
"""How long :func:`reachable` waits for Keras' weights server, seconds."""

SCRATCH_BN_MOMENTUM = 0.9
"""Batch-norm momentum of a backbone trained from scratch. Keras' MobileNetV3 uses 0.999 (the
TF-slim value for ImageNet runs of ~10⁶ steps): after the few thousand steps of a run here its
moving averages still lag far behind the weights, and a model that trains well validates near
chance. 0.9 (as EfficientNetV2 in Keras and our ``resnet``) follows within ~20 steps."""

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
"""Where Keras Applications download their weights from (``BASE_WEIGHTS_PATH`` in Keras)."""


@keras.saving.register_keras_serializable(package="catsdogs")
class CaffePreprocess(layers.Layer):
    """ImageNet "caffe" preprocessing as a layer: RGB → BGR, then subtract the ImageNet mean
    pixel (103.939, 116.779, 123.68) in BGR order, no scaling. The same numbers as
    ``keras.applications.resnet50.preprocess_input`` (mode ``"caffe"``, from the original
    Caffe ResNet release, He et al. 2016); a layer, so the saved model loads with
    ``safe_mode=True`` (a ``Lambda`` would be refused).

    Input and output: ``(batch, height, width, 3)`` float, input in 0–255 RGB.
    """

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.cast(keras.ops.array(self.MEAN_BGR), bgr.dtype)


@keras.saving.register_keras_serializable(package="catsdogs")
class TorchPreprocess(layers.Layer):
    """ImageNet "torch" preprocessing as a layer: 0–255 → 0–1, minus the ImageNet mean
    (0.485, 0.456, 0.406), divided by its standard deviation (0.229, 0.224, 0.225), per RGB
    channel. The numbers of EfficientNetV2-B*'s own ``include_preprocessing`` (a ``Rescaling``
    and a ``Normalization`` layer in Keras, the latter not exportable to ONNX: tf2onnx leaves its
    constants as graph inputs), with plain constants.

    Input and output: ``(batch, height, width, 3)`` float, input in 0–255 RGB.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def call(self, inputs):
        mean = keras.ops.cast(keras.ops.array(self.MEAN), inputs.dtype)
        std = keras.ops.cast(keras.ops.array(self.STD), inputs.dtype)
        return (inputs / 255.0 - mean) / std


@dataclass(frozen=True)
class Backbone:
    """One Keras Applications architecture, used without its classifier.

    Attributes:
        name: registry name, in the field's spelling (``"mobilenet_v3_small"``).
        build: the Keras Applications constructor (``keras.applications.MobileNetV3Small``).
        weights_file: Keras' file name of its ImageNet weights without the top, in
            ``$KERAS_HOME/models``.
        weights_subdir: the folder of that file under :data:`KERAS_WEIGHTS_URL`.
        input_range: ``"0-255"`` (the constructor's ``include_preprocessing`` rescales
            inside the model), ``"caffe"`` (:class:`CaffePreprocess` is added in front) or
            ``"torch"`` (:class:`TorchPreprocess`).
        kwargs: extra constructor options.
        source: the paper.
    """

    name: str
    build: Callable[..., keras.Model]
    weights_file: str
    weights_subdir: str
    input_range: str
    source: str
    kwargs: dict = field(default_factory=dict)

    @property
    def weights_url(self) -> str:
        """Where Keras downloads :attr:`weights_file` from."""
        return f"{KERAS_WEIGHTS_URL}{self.weights_subdir}/{self.weights_file}"


PREPROCESS = {"caffe": CaffePreprocess, "torch": TorchPreprocess}
""":attr:`Backbone.input_range` → the layer that prepares 0–255 RGB input for it."""

BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("mobilenet_v3_small", keras.applications.MobileNetV3Small,
             "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "mobilenet_v3", "0-255",
             "Howard et al. 2019, Searching for MobileNetV3, arXiv:1905.02244",
             {"include_preprocessing": True}),
    Backbone("mobilenet_v3_large", keras.applications.MobileNetV3Large,
             "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "mobilenet_v3", "0-255",
             "Howard et al. 2019, Searching for MobileNetV3, arXiv:1905.02244",
             {"include_preprocessing": True}),
    Backbone("efficientnet_v2_b0", keras.applications.EfficientNetV2B0,
             "efficientnetv2-b0_notop.h5", "efficientnet_v2", "torch",
             "Tan & Le 2021, EfficientNetV2: Smaller Models and Faster Training, "
             "arXiv:2104.00298", {"include_preprocessing": False}),
    Backbone("resnet50", keras.applications.ResNet50,
             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet", "caffe",
             "He et al. 2016, Deep Residual Learning for Image Recognition, arXiv:1512.03385"),
]}
"""Registry name → :class:`Backbone`."""


def keras_cache_dir() -> str:
    """Keras' download cache for model weights: ``$KERAS_HOME/models``, or
    ``~/.keras/models`` when ``KERAS_HOME`` is not set (``keras.utils.get_file``'s rule)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def cached_weights(name: str) -> str | None:
    """The ImageNet weights file of backbone ``name`` in Keras' cache, or None if absent."""
    path = os.path.join(keras_cache_dir(), BACKBONES[name].weights_file)
    return path if os.path.isfile(path) else None


def reachable(url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True when an HTTP ``HEAD`` of ``url`` gets any answer within ``timeout`` seconds
    (proxies from the environment are honoured, as Keras' download honours them)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def resolve_weights(name: str, weights: str | None) -> str | None:
    """What to pass as ``weights=`` to backbone ``name``'s Keras constructor.

    Args:
        name: a key of :data:`BACKBONES`.
        weights: ``"none"``/None (random initialisation), ``"imagenet"`` or a path to a
            ``.h5`` / ``.weights.h5`` file of this backbone's weights (no top).

    Returns:
        None, a file path, or ``"imagenet"`` (the file is not cached but Keras' server
        answers: Keras downloads it into :func:`keras_cache_dir`).

    Raises:
        ConfigError: a missing weights file, or ``imagenet`` weights neither cached nor
            downloadable — one line with the expected file name and folder.
    """
    if weights in (None, "", "none"):
        return None
    spec = BACKBONES[name]
    if weights == "imagenet":
        if path := cached_weights(name):
            return path
        if reachable(spec.weights_url):
            return "imagenet"
        raise ConfigError(
            f"ImageNet weights for {name} are not in Keras' cache and {spec.weights_url} cannot "
            f"be reached: put {spec.weights_file} in {keras_cache_dir()} (set KERAS_HOME to use "
            f"another cache), or train from scratch with --weights none")
    if not os.path.isfile(weights):
        raise ConfigError(f"{weights}: no such weights file (--weights takes none, imagenet or "
                          f"the path of a .h5 / .weights.h5 file)")
    if not weights.endswith(".h5"):
        raise ConfigError(f"{weights}: not a Keras weights file (.h5 or .weights.h5)")
    return weights


def build_backbone(name: str, weights: str | None = None) -> keras.Model:
    """Backbone ``name`` without its classifier, for any input size: ``(batch, None, None, 3)``
    in :attr:`Backbone.input_range` → the last feature map ``(batch, h, w, channels)``.

    Args:
        weights: as for :func:`resolve_weights`. Without weights (from scratch) every
            batch-norm layer gets momentum :data:`SCRATCH_BN_MOMENTUM`.

    Raises:
        ConfigError: weights that cannot be found (:func:`resolve_weights`) or that do not fit
            this architecture (the file is named).
    """
    spec = BACKBONES[name]
    resolved = resolve_weights(name, weights)
    try:
        model = spec.build(include_top=False, weights=resolved, input_shape=(None, None, 3),
                           **spec.kwargs)
    except (ValueError, KeyError, OSError) as exc:
        if resolved is None:
            raise
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ConfigError(f"{resolved}: cannot load these weights into {name} ({reason})"
                          ) from None
    if resolved is None:
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    return model
