"""Transfer learning in two stages (https://keras.io/guides/transfer_learning/).

Stage 1 trains only the new head on a frozen pretrained backbone, so the large gradients of a
randomly initialised head do not wreck the pretrained features; stage 2 unfreezes the top of
the backbone and fine-tunes it with a lower learning rate. Batch-norm layers stay frozen, hence
in inference mode, throughout (:func:`catsdogs.models._application`), as the guide explains.
:func:`catsdogs.training.train` runs the stages as two ``fit`` calls, each with its own
resumable backup.
"""

from __future__ import annotations

import dataclasses

import keras

from catsdogs.config import TrainConfig
from catsdogs.errors import ConfigError
from catsdogs.models import BACKBONE_LAYER


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested Keras Applications backbone of a backbone model.

    Raises:
        ConfigError: ``model`` has no backbone (our own ``baseline`` and ``resnet``).
    """
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError:
        raise ConfigError(f"model {model.name!r} has no pretrained backbone to freeze; "
                          "head_epochs needs a Keras Applications model") from None


def freeze_backbone(model: keras.Model) -> int:
    """Stage 1: make the whole backbone non-trainable. Returns the trainable parameter count
    left (the head's). Compile the model again afterwards (Keras reads trainability when it
    builds the train step)."""
    backbone_of(model).trainable = False
    return sum(int(keras.ops.size(v)) for v in model.trainable_variables)


def unfreeze_top(model: keras.Model, fraction: float) -> tuple[int, int]:
    """Stage 2: make the top ``fraction`` of the backbone's layers trainable (counted in layer
    order from the output), batch-norm layers excepted. Compile again afterwards.

    Returns:
        ``(trainable layers with weights, layers with weights)`` of the backbone.
    """
    backbone = backbone_of(model)
    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    cut = len(weighted) - max(1, round(fraction * len(weighted)))
    for i, layer in enumerate(weighted):
        layer.trainable = (i >= cut
                           and not isinstance(layer, keras.layers.BatchNormalization))
    return sum(layer.trainable for layer in weighted), len(weighted)


def fine_tune_config(cfg: TrainConfig) -> TrainConfig:
    """The settings stage 2's learning-rate schedule is built from: peak
    ``learning_rate × fine_tune_lr_factor`` over the ``epochs − head_epochs`` epochs left."""
    return dataclasses.replace(cfg, learning_rate=cfg.learning_rate * cfg.fine_tune_lr_factor,
                               epochs=cfg.epochs - cfg.head_epochs, head_epochs=0)
