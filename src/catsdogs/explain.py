"""Grad-CAM: where in a photo the model looked when it decided cat or dog.

Gradient-weighted Class Activation Mapping (Selvaraju et al. 2017, "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization", arXiv:1610.02391): with
``A^k`` the ``k``-th channel of the last convolutional feature map (the model's ``"features"``
layer) and ``y`` the score of the explained class *before* the sigmoid (the ``"logits"``
layer),

    alpha_k = mean_{i,j} dy / dA^k_ij        (global-average-pooled gradients, eq. 1)
    L       = ReLU(sum_k alpha_k A^k)         (eq. 2)

and ``L`` is scaled to 0–1 by its maximum. The model has a single logit ``z`` with
P(dog) = sigmoid(z), so the dog score is ``z`` and the cat score is ``-z`` (P(cat) = sigmoid(-z));
by default the predicted class is explained.

The photo goes through exactly the preprocessing of :mod:`catsdogs.predict` (decode with
:func:`catsdogs.data.images.load_image`, resize with :func:`catsdogs.data.preprocess.prepare`);
the heatmap
is then resized back to the photo's own size, which also undoes the square resize's stretch.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image

from catsdogs.constants import CLASSES
from catsdogs.data.images import load_image
from catsdogs.data.preprocess import prepare
from catsdogs.errors import CatsDogsError, RunError
from catsdogs.io import atomic_path
from catsdogs.predict import Predictor

FEATURES_LAYER = "features"
LOGITS_LAYER = "logits"
DEFAULT_ALPHA = 0.45
"""Weight of the coloured heatmap in the overlay (0 = photo only, 1 = heatmap only)."""
DEFAULT_COLORMAP = "jet"


def gradcam_model(model: keras.Model) -> keras.Model:
    """A model with the same input as ``model`` and two outputs: the ``"features"`` feature map
    ``(batch, h, w, channels) float32`` and the ``"logits"`` output ``(batch, 1) float32``.

    Raises:
        RunError: ``model`` has no ``"features"`` or ``"logits"`` layer, or ``"features"`` is
            not a 4-D feature map.
    """
    try:
        features = model.get_layer(FEATURES_LAYER).output
        logits = model.get_layer(LOGITS_LAYER).output
    except ValueError as exc:
        raise RunError(f"model {model.name!r} cannot be explained: {exc}") from None
    if len(features.shape) != 4:
        raise RunError(f"model {model.name!r}: layer {FEATURES_LAYER!r} has shape "
                       f"{features.shape}, not a (batch, h, w, channels) feature map")
    return keras.Model(model.inputs, [features, logits], name=f"{model.name}_gradcam")


class GradCAM:
    """Grad-CAM for one model, safe to share between threads.

    Args:
        model: a catsdogs model (layers ``"features"`` and ``"logits"``).
        lock: lock held around every model call; pass the ``lock`` of the
            :class:`~catsdogs.engines.KerasEngine` that shares ``model`` to serialise with its
            predictions (Keras layers are not re-entrant).
    """

    def __init__(self, model: keras.Model, lock: threading.Lock | None = None):
        self._model = gradcam_model(model)
        self._lock = lock or threading.Lock()
        self._fn = tf.function(self._compute, reduce_retracing=True)

    def _compute(self, x: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            features, logits = self._model(x, training=False)
            # logit for "dog" (target 1), its negation for "cat" (target 0); -1 → predicted class
            sign = tf.where(target < 0, tf.where(logits[:, 0] >= 0.0, 1.0, -1.0),
                            tf.where(target > 0, 1.0, -1.0))
            score = tf.reduce_sum(sign * logits[:, 0])
        grads = tape.gradient(score, features)                      # (1, h, w, k)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # alpha_k, (1, 1, 1, k)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0]  # (h, w)
        return cam, logits[0, 0]

    def __call__(self, prepared_image: np.ndarray, target: str | None = None
                 ) -> tuple[np.ndarray, float]:
        """Heatmap and logit for one prepared photo.

        Args:
            prepared_image: ``(image_size, image_size, 3) uint8`` from
                :func:`catsdogs.data.preprocess.prepare` (any ``(H, W, 3)`` 0–255 array works:
                the model resizes it).
            target: ``"dog"``, ``"cat"`` or None for the predicted class (``logit >= 0`` is
                dog, i.e. the 0.5 threshold).

        Returns:
            ``(heatmap, logit)``: heatmap ``(h, w) float32`` in [0, 1] at the feature map's
            resolution (all zeros when nothing supports the class), logit a float.
        """
        code = {None: -1, "cat": 0, "dog": 1}
        if target not in code:
            raise ValueError(f"target must be 'cat', 'dog' or None, not {target!r}")
        image = np.asarray(prepared_image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        x = tf.convert_to_tensor(image[None], tf.float32)
        with self._lock:
            cam, logit = self._fn(x, tf.constant(code[target], tf.int32))
        cam = cam.numpy().astype(np.float32)
        top = float(cam.max()) if cam.size else 0.0
        cam = cam / top if top > 0 and np.isfinite(top) else np.zeros_like(cam)
        return np.clip(cam, 0.0, 1.0).astype(np.float32), float(logit.numpy())


def gradcam(model: keras.Model, prepared_image: np.ndarray, target: str | None = None
            ) -> np.ndarray:
    """Grad-CAM heatmap (Selvaraju et al. 2017, arXiv:1610.02391) of one photo, computed with
    ``tf.GradientTape`` as the gradient of the class logit w.r.t. the ``"features"`` layer.

    Builds a fresh :class:`GradCAM` each call; reuse a :class:`GradCAM` for many photos.

    Args:
        model: a catsdogs model (layers ``"features"`` and ``"logits"``).
        prepared_image: ``(image_size, image_size, 3) uint8`` (from
            :func:`catsdogs.data.preprocess.prepare`).
        target: ``"dog"``, ``"cat"`` or None (the predicted class).

    Returns:
        ``(h, w) float32`` in [0, 1], ``(h, w)`` the feature map's spatial size.
    """
    return GradCAM(model)(prepared_image, target)[0]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA,
            colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Blend a heatmap, coloured with a matplotlib colormap, over a photo.

    Args:
        image: the photo, ``(H, W, 3) uint8``.
        heatmap: ``(h, w)`` floats in [0, 1], any resolution; resized (bilinear) to ``(H, W)``.
        alpha: heatmap weight, 0–1: ``out = (1 - alpha) * image + alpha * colour(heatmap)``.
        colormap: matplotlib colormap name (``"jet"``, ``"turbo"``, …); high values are red.

    Returns:
        ``(H, W, 3) uint8`` RGB overlay, the size of ``image``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    image = np.asarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    small = Image.fromarray(np.ascontiguousarray(heat))
    big = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    colours = matplotlib.colormaps[colormap](np.clip(big, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray, max_side: int | None = None, compress_level: int = 1) -> bytes:
    """Encode an ``(H, W, 3) uint8`` image as PNG bytes, first shrunk (aspect kept, Lanczos) so
    neither side exceeds ``max_side`` pixels when given.

    ``compress_level`` is zlib's 0–9; on photo-like overlays 1 is ~3× faster than Pillow's
    default 6 and no larger."""
    img = Image.fromarray(np.ascontiguousarray(image, np.uint8))
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


@dataclass
class Explanation:
    """One explained photo.

    Attributes:
        path: the photo's name (path or upload name).
        label: predicted label, ``"cat"``, ``"dog"`` or ``"other"``.
        p_dog: P(dog), 0–1, identical to ``catsdogs predict``'s.
        heatmap: ``(h, w) float32`` Grad-CAM in [0, 1] for the predicted class.
        overlay: ``(H, W, 3) uint8`` heatmap blended over the photo, at the photo's size.
    """

    path: str
    label: str
    p_dog: float
    heatmap: np.ndarray
    overlay: np.ndarray

    @property
    def p_cat(self) -> float:
        """1 − P(dog)."""
        return 1.0 - self.p_dog


def explain_image(predictor: Predictor, cam: GradCAM, image: np.ndarray, name: str,
                  p_dog: float | None = None, alpha: float = DEFAULT_ALPHA,
                  max_side: int | None = None, label: str | None = None) -> Explanation:
    """Classify and explain one decoded photo.

    Args:
        predictor: gives P(dog) and the label (the path shared with ``catsdogs predict``).
        cam: a :class:`GradCAM` for the run's Keras model.
        image: ``(H, W, 3) uint8`` from :func:`catsdogs.data.images.load_image`.
        name: the photo's name in the result.
        p_dog: P(dog) when already known (with ``label``: skips a second prediction).
        alpha: overlay heatmap weight (see :func:`overlay`).
        max_side: when given, the overlay is drawn on a copy of the photo shrunk (aspect kept)
            so neither side exceeds it; the heatmap itself always comes from the full photo.
        label: the predicted label when already known (``"cat"``, ``"dog"`` or ``"other"``).

    Returns:
        :class:`Explanation`; the heatmap explains the predicted label.
    """
    if p_dog is None or label is None:
        prediction = predictor.prediction(name, predictor.outputs_images([image])[0])
        p_dog, label = prediction.p_dog, prediction.label
    # an "other" photo is explained for the side (cat or dog) its P(dog) leans to
    heat, _ = cam(prepare(image, predictor.image_size),
                  target=label if label in CLASSES else None)
    shown = image
    if max_side and max(image.shape[:2]) > max_side:
        small = Image.fromarray(np.ascontiguousarray(image, np.uint8))
        small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        shown = np.asarray(small, np.uint8)
    return Explanation(name, label, p_dog, heat, overlay(shown, heat, alpha))


def write_png(out_png: str, image: np.ndarray) -> None:
    """Write an ``(H, W, 3) uint8`` image as a PNG file, atomically.

    Raises:
        CatsDogsError: the file cannot be written.
    """
    data = png_bytes(image)
    try:
        with atomic_path(out_png) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise CatsDogsError(f"{out_png}: cannot write ({exc.strerror or exc})") from None


def explain_to_file(run: str, image_path: str, out_png: str,
                    alpha: float = DEFAULT_ALPHA) -> Explanation:
    """Classify one photo with a run's model and write its Grad-CAM overlay as a PNG.

    Args:
        run: run folder with ``model.keras`` (loaded in safe mode) and ``config.json``.
        image_path: the photo (any format :func:`catsdogs.data.images.load_image` reads).
        out_png: output file; written atomically (a PNG whatever its extension), at the photo's
            own size (EXIF orientation applied).
        alpha: overlay heatmap weight, 0–1.

    Returns:
        :class:`Explanation` with ``.path``, ``.label``, ``.p_dog`` (equal to ``catsdogs
        predict``'s), ``.heatmap`` and ``.overlay``.

    Raises:
        RunError: bad run folder or model. ImageError: unreadable photo (nothing is written).
        CatsDogsError: the output file cannot be written.
    """
    predictor = Predictor.from_run(run, engine="keras")  # Grad-CAM needs the Keras model
    image = load_image(image_path)  # raises ImageError before anything is written
    result = explain_image(predictor, GradCAM(predictor.engine.model), image, str(image_path),
                           alpha=alpha)
    write_png(out_png, result.overlay)
    return result


__all__ = ["GradCAM", "Explanation", "gradcam", "gradcam_model", "overlay",
           "png_bytes", "write_png", "explain_image", "explain_to_file"]
