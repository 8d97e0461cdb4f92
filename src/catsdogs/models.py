"""Model registry: :func:`build_model` builds a Keras model by name (as timm does).

Every model takes raw RGB images of any size, ``(batch, height, width, 3)`` with values 0–255
(``uint8`` or ``float32``), resizes them itself (bilinear, antialiased) to its ``image_size``,
rescales to 0–1, and outputs P(dog) = sigmoid(logit), ``(batch, 1) float32``. Resizing and
rescaling live inside the saved model, so ``model.keras`` alone classifies a photo.

Each model names its last convolutional feature map layer ``"features"`` and its dog logit
``"logits"`` (for Grad-CAM). Built with ``pet_head=True`` (training with ``--other``), a model
also answers P(pet), "a cat or a dog at all", from a second logit: its output is then
``(batch, 2)``, [P(dog), P(pet)].
"""

from __future__ import annotations

import inspect
import math
import os
import zipfile
from collections.abc import Callable

import keras
import tensorflow as tf
from keras import layers
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
from tensorflow.python.profiler.model_analyzer import profile
from tensorflow.python.profiler.option_builder import ProfileOptionBuilder
from tensorflow.python.util.deprecation import silence

from catsdogs.backbones import (
    BACKBONES,
    PREPROCESS,
    TorchPreprocess,
    build_backbone,
    cached_weights,
)
from catsdogs.errors import ConfigError, RunError

PET_COLUMN = 1
"""Column of P(pet) in the output of a model built with ``pet_head=True``."""

ModelFn = Callable[..., keras.Model]
_REGISTRY: dict[str, ModelFn] = {}


def register(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: make a model builder available to :func:`build_model` as ``name``."""

    def wrap(fn: ModelFn) -> ModelFn:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def build_model(name: str, image_size: int, **kwargs) -> keras.Model:
    """Build an (uncompiled) model by registry name.

    Args:
        name: one of :func:`available_models` (``"baseline"``, ``"resnet"``, ...).
        image_size: side, in pixels, the model resizes its input to.
        **kwargs: builder-specific options (e.g. ``widths`` for ``resnet``).

    Raises:
        ConfigError: unknown name (a ``ValueError``).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {available_models()}")
    return _REGISTRY[name](image_size=image_size, **kwargs)


@keras.saving.register_keras_serializable(package="catsdogs")
class Resize(layers.Resizing):
    """``keras.layers.Resizing`` (bilinear, antialiased) that is skipped when the input already
    has the target size (known statically when the graph is traced).

    The training pipeline feeds images already resized by the same operation
    (:func:`catsdogs.data.preprocess.resize`), so skipping is exact, and it keeps the
    antialiased resize (not supported by XLA) out of the ``jit_compile``d training step.
    Raw images of any other size are resized as usual.

    Training sets :attr:`passthrough` so that batches of other sizes, already resized by the
    pipeline (progressive resizing, see :attr:`catsdogs.config.TrainConfig.train_sizes`), reach
    the convolutions unchanged; it is not saved, so a loaded model always resizes.
    """

    passthrough = False

    def call(self, inputs):
        if self.passthrough or (inputs.shape[1] == self.height
                                and inputs.shape[2] == self.width):
            return keras.ops.cast(inputs, self.compute_dtype)
        return super().call(inputs)


def preprocessing_head(image_size: int, rescale: bool = True
                       ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Input of any size → ``Resizing`` (bilinear, antialias) → ``Rescaling(1/255)``.

    Returns ``(inputs, x)`` where ``inputs`` is ``(batch, None, None, 3) float32`` and ``x`` is
    ``(batch, image_size, image_size, 3)`` in 0–1 (in 0–255 without ``rescale``).
    """
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = Resize(image_size, image_size, interpolation="bilinear", antialias=True,
               name="resize")(inputs)
    if rescale:
        x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    return inputs, x


def _sigmoid_output(x: keras.KerasTensor, pet_head: bool = False) -> keras.KerasTensor:
    """P(dog) = sigmoid(logit), ``(batch, 1)``; with ``pet_head`` also P(pet) from a second
    logit on the same features, ``(batch, 2)`` = [P(dog), P(pet)] (:data:`PET_COLUMN`)."""
    logits = layers.Dense(1, name="logits", dtype="float32")(x)
    p_dog = layers.Activation("sigmoid", name="p_dog", dtype="float32")(logits)
    if not pet_head:
        return p_dog
    pet_logits = layers.Dense(1, name="pet_logits", dtype="float32")(x)
    p_pet = layers.Activation("sigmoid", name="p_pet", dtype="float32")(pet_logits)
    return layers.Concatenate(name="outputs", dtype="float32")([p_dog, p_pet])


@register("baseline")
def baseline(image_size: int = 64, pet_head: bool = False) -> keras.Model:
    """The classic Keras cats-vs-dogs tutorial CNN, layer for layer.

    Conv2D(32, 3×3, ReLU) → MaxPool(2×2, stride 2) → Conv2D(32, 3×3, ReLU) → MaxPool(2×2,
    stride 2) → Flatten → Dense(128, ReLU) → Dense(1, sigmoid), on 64×64 inputs (the widely
    copied "Convolutional Neural Network" tutorial of the Udemy/SuperDataScience "Deep Learning
    A-Z" course, built on ``ImageDataGenerator``). Here the final Dense(1, sigmoid) is split
    into ``logits`` + ``p_dog`` (the same function) so Grad-CAM can reach the logit.
    """
    inputs, x = preprocessing_head(image_size)
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(pool_size=2, strides=2, name="pool1")(x)
    x = layers.Conv2D(32, 3, activation="relu", name="features")(x)
    x = layers.MaxPooling2D(pool_size=2, strides=2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    return keras.Model(inputs, _sigmoid_output(x, pet_head), name="baseline")


@keras.saving.register_keras_serializable(package="catsdogs")
class WSConv2D(layers.Conv2D):
    """``Conv2D`` with scaled weight standardization (Brock et al. 2021, "Characterizing
    signal propagation to close the performance gap in unnormalized ResNets",
    arXiv:2101.08692): each output channel's kernel is made zero-mean with variance
    ``1 / fan_in`` (``fan_in`` = kernel height × width × input channels; ``eps`` floors
    ``variance × fan_in``) before the convolution, times a learnt per-channel ``gain``
    (initialised by ``gain_initializer``) and the constant ``scale``. Input
    ``(batch, height, width, in)``, cast to the compute dtype; output
    ``(batch, height', width', filters)`` in the compute dtype (bfloat16 under
    ``mixed_bfloat16``). Channels-last only.

    ``scale`` folds constant factors of the net into the kernel, so they cost no extra pass
    over the activations: ReLU's gain γ = √(2 / (1 − 1/π)) (the paper's), 1/β of the input's
    expected standard deviation and the residual branch's α.
    """

    def __init__(self, *args, scale: float = 1.0, gain_initializer="ones", eps: float = 1e-4,
                 **kwargs):
        # No autocast: the kernel's mean and variance are computed in the variables' float32
        # and only the standardized kernel is cast to the compute dtype (bfloat16 training).
        kwargs["autocast"] = False
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last":
            raise ConfigError(f"WSConv2D {self.name}: channels_last only, got {self.data_format}")
        self.scale, self.eps = float(scale), float(eps)
        self.gain_initializer = keras.initializers.get(gain_initializer)

    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(shape=(self.filters,), initializer=self.gain_initializer,
                                    name="gain")

    def standardized_kernel(self):
        """The kernel the convolution uses, ``(kh, kw, in, out)`` in the variables' dtype
        (float32)."""
        kernel = self.kernel
        fan_in = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
        mean = keras.ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = keras.ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        return (kernel - mean) * keras.ops.rsqrt(keras.ops.maximum(var * fan_in, self.eps)) \
            * (self.gain * self.scale)

    def call(self, inputs):
        inputs = keras.ops.cast(inputs, self.compute_dtype)  # autocast is off (__init__)
        outputs = self.convolution_op(
            inputs, keras.ops.cast(self.standardized_kernel(), self.compute_dtype))
        if self.use_bias:
            outputs = outputs + keras.ops.cast(self.bias, self.compute_dtype)
        return outputs if self.activation is None else self.activation(outputs)

    # Conv2D saves and loads its kernel and bias by position ("0", "1"); the gain comes next.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built:
            store[str(1 + self.use_bias)] = self.gain

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built:
            self.gain.assign(store[str(1 + self.use_bias)])

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "eps": self.eps,
                "gain_initializer": keras.initializers.serialize(self.gain_initializer)}


RELU_GAIN = (2.0 / (1.0 - 1.0 / math.pi)) ** 0.5
"""γ of ReLU for scaled weight standardization: 1 / the standard deviation of ReLU(x) for
x ~ N(0, 1) (Brock et al. 2021, arXiv:2101.08692), ≈ 1.7139."""

NF_ALPHA = 0.2
"""α of a normalizer-free residual block, ``h + α f(h / β)`` (the paper's value)."""


NORMS = ("batch", "nf")
"""``resnet``'s normalizations: ``batch`` (batch norm after every convolution, post-activation
blocks) or ``nf`` (normalizer-free: scaled weight standardization, pre-activation blocks,
:func:`_nf_stages`)."""


def _conv_bn(x, filters: int, kernel: int = 3, strides: int = 1, act: bool = True, name=""):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if act else x


def _basic_block(x, filters: int, strides: int, name: str):
    """ResNet basic block (He et al. 2016, "Deep Residual Learning", arXiv:1512.03385), with
    the shortcut downsampled by average pooling + 1×1 conv ("ResNet-D", Bag of Tricks, He et
    al. 2019, arXiv:1812.01187) and the last BN's scale initialised to zero (Goyal et al. 2017,
    arXiv:1706.02677) so each block starts as the identity."""
    shortcut = x
    y = _conv_bn(x, filters, 3, strides, name=f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_b_conv")(y)
    y = layers.BatchNormalization(momentum=0.9, gamma_initializer="zeros", name=f"{name}_b_bn")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        if strides != 1:
            shortcut = layers.AveragePooling2D(strides, padding="same",
                                               name=f"{name}_down_pool")(shortcut)
        shortcut = _conv_bn(shortcut, filters, 1, 1, act=False, name=f"{name}_down")
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


PIXEL_STD = sum(TorchPreprocess.STD) / len(TorchPreprocess.STD)
"""Standard deviation of a photo's 0–1 pixels, ≈ 0.226: ImageNet's per-channel values of
``keras.applications``' torch-mode preprocessing (:class:`catsdogs.backbones.TorchPreprocess`),
averaged. The normalizer-free stem divides by it so the net starts from inputs of about unit
variance, as the paper's normalized inputs."""


def _nf_stages(x, stem: int, widths, blocks) -> keras.KerasTensor:
    """The normalizer-free body: a scaled-WS stem, then pre-activation basic blocks
    ``h + α f(h / β)`` (Brock et al. 2021, arXiv:2101.08692), β² being the expected variance of
    ``h``: 1 after the stem, 1 + α² after a stage's first block (whose shortcut, average
    pooling + 1×1 convolution as in ResNet-D, takes the activated input ``ReLU(h / β)``, as in
    the paper), plus α² after each later block. Each residual branch ends in a zero-gain
    convolution, so at initialisation a block is its shortcut (the identity after a stage's
    first block). ``x``: ``(batch, size, size, 3)`` pixels 0–1; returns the post-ReLU feature
    map ``(batch, size / 2^(1 + stages), …, widths[-1])``."""
    x = WSConv2D(stem, 3, strides=2, padding="same", scale=1.0 / PIXEL_STD, name="stem_conv")(x)
    variance = 1.0
    for s, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for b in range(n):
            name, strides = f"s{s + 1}b{b + 1}", 2 if b == 0 else 1
            into = RELU_GAIN / variance ** 0.5  # γ of the ReLU and 1/β, folded into the kernels
            out = layers.ReLU(name=f"{name}_in_relu")(x)
            shortcut = x
            if b == 0:
                shortcut = layers.AveragePooling2D(strides, padding="same",
                                                   name=f"{name}_down_pool")(out)
                shortcut = WSConv2D(w, 1, scale=into, name=f"{name}_down_conv")(shortcut)
            y = WSConv2D(w, 3, strides=strides, padding="same", scale=into,
                         name=f"{name}_a_conv")(out)
            y = layers.ReLU(name=f"{name}_a_relu")(y)
            y = WSConv2D(w, 3, padding="same", scale=RELU_GAIN * NF_ALPHA,
                         gain_initializer="zeros", name=f"{name}_b_conv")(y)
            x = layers.Add(name=f"{name}_add")([y, shortcut])
            variance = (1.0 if b == 0 else variance) + NF_ALPHA ** 2
    return layers.ReLU(name="final_relu")(x)


@register("resnet")
def resnet(image_size: int = 128, widths: tuple[int, ...] = (32, 64, 128, 256),
           blocks: tuple[int, ...] = (1, 1, 2, 1), stem: int = 24,
           dropout: float = 0.2, pet_head: bool = False, norm: str = "batch"
           ) -> keras.Model:
    """Our from-scratch residual CNN for small CPUs.

    A stride-2 3×3 stem, then one stage per entry of ``widths`` (the first block of each stage
    halves the resolution) of ResNet basic blocks, global average pooling, dropout and a single
    logit. At 128 px with the defaults it costs ~0.15 GFLOPs per image (forward).

    Args:
        image_size: the size (pixels) inputs are resized to; input ``(batch, h, w, 3)`` float32
            pixels 0–255, output ``(batch, 1)`` float32 P(dog) (``(batch, 2)`` with
            ``pet_head``: P(dog), P(pet)).
        widths, blocks: channels and number of basic blocks of each stage.
        stem: channels of the stride-2 stem convolution.
        dropout: dropout rate before the logit(s).
        pet_head: a second logit for P(pet) (training with ``--other``).
        norm: ``batch``: batch norm after every convolution (post-activation blocks);
            ``nf``: normalizer-free (:func:`_nf_stages`), the same widths and depths without
            the batch-norm arithmetic (docs/recipes.md, "Normalizer-free net").

    Raises:
        ConfigError: an unknown ``norm``.
    """
    inputs, x = preprocessing_head(image_size)
    if norm not in NORMS:
        raise ConfigError(f"resnet: unknown norm {norm!r}; choose one of {NORMS}")
    if norm == "nf":
        x = _nf_stages(x, stem, widths, blocks)
    else:
        x = _conv_bn(x, stem, 3, 2, name="stem")
        for s, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for b in range(n):
                x = _basic_block(x, w, 2 if b == 0 else 1, name=f"s{s + 1}b{b + 1}")
    x = layers.Identity(name="features")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _sigmoid_output(x, pet_head), name="resnet")


BACKBONE_LAYER = "backbone"
"""Name of the Keras Applications backbone (a nested model) inside a backbone model."""


def _application(name: str, image_size: int = 160, weights: str | None = None,
                 pretrained: bool | None = None, dropout: float = 0.2,
                 pet_head: bool = False) -> keras.Model:
    """A Keras Applications backbone (:data:`catsdogs.backbones.BACKBONES`) with a new head:
    our resize → the backbone's own input scaling → backbone → ``features`` → global average
    pooling → dropout → logit(s), as in https://keras.io/guides/transfer_learning/.

    Args:
        weights: ``none``/None, ``imagenet`` or a weights file of the backbone
            (:func:`catsdogs.backbones.resolve_weights`).
        pretrained: the backbone's batch-norm layers frozen, so they always run in inference
            mode: fine-tuning must not overwrite statistics learnt on the pretraining data with
            those of small batches (https://keras.io/guides/transfer_learning/). The guide's
            ``base_model(x, training=False)`` is not enough in Keras 3: a functional model
            passes the outer call's ``training=True`` (from ``fit``) on to every layer,
            overriding the value recorded at the node; a non-trainable ``BatchNormalization``
            runs in inference mode whatever it is called with. Default: when ``weights`` is
            set.

    Raises:
        ConfigError: weights that cannot be found or loaded.
    """
    spec = BACKBONES[name]
    inputs, x = preprocessing_head(image_size, rescale=False)
    if spec.input_range in PREPROCESS:
        x = PREPROCESS[spec.input_range](name="imagenet_preprocess")(x)
    backbone = build_backbone(name, weights)
    backbone.name = BACKBONE_LAYER
    if weights not in (None, "", "none") if pretrained is None else pretrained:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    x = backbone(x)
    x = layers.Identity(name="features")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _sigmoid_output(x, pet_head), name=name)


def _register_backbone(name: str) -> None:
    def builder(image_size: int = 224, **kwargs) -> keras.Model:
        return _application(name, image_size, **kwargs)

    builder.__doc__ = (f"{name} ({BACKBONES[name].source}) from Keras Applications with a "
                       f"binary head; see :func:`_application`.")
    register(name)(builder)


for _name in BACKBONES:
    _register_backbone(_name)


def default_size(name: str) -> int:
    """The ``image_size`` model ``name`` is built at when none is given, pixels.

    Raises:
        ConfigError: unknown name.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {available_models()}")
    return int(inspect.signature(_REGISTRY[name]).parameters["image_size"].default)


def forward_flops(model: keras.Model, image_size: int) -> float:
    """Forward FLOPs of one ``image_size``-pixel photo through ``model`` (a multiply-add counts
    2), from TensorFlow's graph profiler on the frozen float32 inference graph."""
    spec = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))
    opts = ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    with silence():  # the profiler's own use of a deprecated TF1 helper
        return float(profile(frozen.graph, options=opts).total_float_ops)


def describe_model(name: str) -> dict:
    """What ``catsdogs models`` prints of model ``name``: ``name``, ``image_size`` (its default
    size, pixels), ``parameters``, ``flops`` (forward, one photo at that size, see
    :func:`forward_flops`) and ``weights``: ``"imagenet (cached)"`` with the cached file,
    ``"imagenet (not cached)"``, or ``"none (ours)"`` for our own models, which train only from
    scratch.

    Raises:
        ConfigError: unknown name.
    """
    size = default_size(name)
    model = build_model(name, size)
    if name in BACKBONES:
        weights = "imagenet (cached)" if cached_weights(name) else "imagenet (not cached)"
    else:
        weights = "none (ours)"
    return {"name": name, "image_size": size, "parameters": model.count_params(),
            "flops": forward_flops(model, size), "weights": weights}


def load_model(path: str) -> keras.Model:
    """Load a ``.keras`` model file safely.

    Uses ``keras.saving.load_model(..., safe_mode=True, compile=False)``: a file with a
    ``Lambda`` layer (arbitrary Python code) is refused, never executed. This module's custom
    layers (:class:`Resize`) are registered by importing it.

    Raises:
        RunError: missing file, not a ``.keras`` archive, or refused/unloadable content.
    """
    if not os.path.isfile(path):
        raise RunError(f"{path}: no model file (train the run first)")
    if not zipfile.is_zipfile(path):
        raise RunError(f"{path}: not a Keras model file (.keras is a zip archive)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad archives
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise RunError(f"{path}: refused to load: the model contains Python code (a Lambda "
                           "layer), which safe mode does not execute") from None
        raise RunError(f"{path}: cannot load model ({type(exc).__name__}: {text[:200]})") from None
