"""Training: scan → deduplicate → split → tf.data → fit (checkpoints, resume) → ``model.keras``.

The flow follows the keras-io example "Image classification from scratch"
(https://keras.io/examples/vision/image_classification_from_scratch/); checkpointing and resume
use Keras callbacks (``BackupAndRestore``, ``ModelCheckpoint``, ``TensorBoard``,
https://keras.io/api/callbacks/). This module trains only: :func:`catsdogs.api.train` runs
:func:`train` and then the test evaluation (:func:`catsdogs.evaluate.evaluate_run`).
"""

from __future__ import annotations

import os
import random
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from catsdogs.augment import AUGMENTATIONS
from catsdogs.callbacks import AtomicModelCheckpoint, HistoryCSV, ProgressiveResize
from catsdogs.config import TrainConfig
from catsdogs.constants import CLASSES
from catsdogs.data.images import load_image
from catsdogs.data.outliers import (
    OUTLIER_TARGET,
    default_holdout,
    load_other_split,
    save_other_split,
    scan_other,
    split_other,
    synthetic_outliers,
)
from catsdogs.data.pipeline import ResizedPhotos, make_dataset
from catsdogs.data.scan import Photo, ScanResult, scan_folder, summary_lines
from catsdogs.data.split import Example, load_split, make_split, save_split, select
from catsdogs.errors import ConfigError, DataError, RunError, TrainingInterrupted
from catsdogs.io import atomic_path
from catsdogs.models import available_models, build_model
from catsdogs.runfolder import (
    BACKUP_DIR,
    BEST_WEIGHTS,
    HISTORY_FILE,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_FILE,
    OTHER_SPLITS_FILE,
    SCAN_FILE,
    SPLITS_FILE,
    is_run_folder,
    read_history,
    run_file,
    training_finished,
    validated_rows,
)
from catsdogs.system import resolve_precision, software_versions


def check_config(cfg: TrainConfig) -> None:
    """Fail fast, before the scan, on settings that cannot train.

    Raises:
        ConfigError: unknown model or augmentation, ``train_sizes`` with an augmentation that
            cannot resize (``tutorial``), or ``val_every`` below 1.
        DataError: ``other`` is set but is not a folder.
    """
    cfg.validation_epochs()
    if cfg.model not in available_models():
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {available_models()}")
    if cfg.augmentation not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {cfg.augmentation!r}; choose one of "
                          f"{sorted(AUGMENTATIONS)}")
    if cfg.other and not os.path.isdir(cfg.other):
        raise DataError(f"{cfg.other}: no such folder of other photos (--other)")
    if cfg.train_sizes and not hasattr(AUGMENTATIONS[cfg.augmentation](), "set_output_size"):
        raise ConfigError(f"train_sizes (progressive resizing) needs an augmentation that can "
                          f"change the image size; {cfg.augmentation!r} cannot")


def prepare_run_folder(run: str, resume: bool, overwrite: bool) -> None:
    """Create the run folder, or check that an existing one may be resumed or replaced.

    Raises:
        RunError: nothing to resume, a complete run to resume, or a non-empty folder without
            ``overwrite``.
    """
    if resume:
        if not is_run_folder(run):
            raise RunError(f"{run}: nothing to resume (no config.json); start it without --resume")
        if training_finished(run) and os.path.exists(run_file(run, METRICS_FILE)):
            raise RunError(f"{run}: this run is already complete; nothing to resume "
                           f"(`catsdogs evaluate {run}` recomputes its metrics)")
        return
    if os.path.exists(run) and not os.path.isdir(run):
        raise RunError(f"{run}: exists and is not a folder")
    if os.path.isdir(run) and os.listdir(run):
        if not overwrite:
            hint = ("use --resume to continue it or --overwrite to start again"
                    if is_run_folder(run) else "choose another --out or pass --overwrite")
            raise RunError(f"{run}: run folder exists and is not empty; {hint}")
        shutil.rmtree(run)
    os.makedirs(run, exist_ok=True)


def _limit(photos: list[Photo], limit: int | None, seed: int) -> list[Photo]:
    """At most ``limit`` photos per class, a seeded random choice, sorted by path."""
    if limit is None:
        return photos
    rng = random.Random(seed)
    out = []
    for label in range(len(CLASSES)):
        group = [p for p in photos if p.label == label]
        rng.shuffle(group)
        out += group[:limit]
    return sorted(out, key=lambda p: p.path)


def prepare_data(cfg: TrainConfig, run: str, progress: bool
                 ) -> tuple[ScanResult, dict[str, np.ndarray]]:
    """Scan, deduplicate, limit and split the photos; write ``scan.json`` and ``splits.csv``.

    Returns:
        The scan, and every readable photo resized to :meth:`TrainConfig.cache_size`, by path
        (``(size, size, 3) uint8``), so training need not decode the files again.

    Raises:
        DataError: the folder is unusable (missing, empty, one class only, …).
    """
    resized = ResizedPhotos(cfg.cache_size())
    result = scan_folder(cfg.data, progress=progress, keep=resized)
    result.write_json(run_file(run, SCAN_FILE))
    for line in summary_lines(result):
        if progress or line.lstrip().startswith("SKIP"):
            print(line)
    result.check_usable()
    photos = _limit(result.deduplicated(), cfg.limit, cfg.seed)
    examples = make_split(photos, cfg.seed,
                          (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction,
                           cfg.test_fraction))
    save_split(examples, run_file(run, SPLITS_FILE))
    if cfg.other:
        _prepare_other(cfg, run, resized, progress)
    return result, resized.finish()


def _prepare_other(cfg: TrainConfig, run: str, keep: ResizedPhotos, progress: bool) -> None:
    """Scan ``cfg.other`` (photos kept resized by ``keep``), hold one kind out, split the rest
    and write ``other.csv``.

    Raises:
        DataError: the folder is unusable or the held-out kind does not exist.
    """
    photos, skipped = scan_other(cfg.other, keep=keep, progress=progress)
    for s in skipped:
        print(f"    SKIP {s.path}: {s.reason}")
    holdout = {"auto": default_holdout(photos), "none": None}.get(cfg.other_holdout,
                                                                  cfg.other_holdout)
    examples = split_other(photos, cfg.seed, holdout,
                           (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction,
                            cfg.test_fraction))
    save_other_split(examples, run_file(run, OTHER_SPLITS_FILE))
    counts = {s: sum(e.split == s for e in examples) for s in ("train", "val", "test", "unseen")}
    print(f"Other photos: {len(photos)} readable ({len(skipped)} skipped) → "
          f"{', '.join(f'{n} {s}' for s, n in counts.items())}"
          f"{f' (held-out kind: {holdout})' if holdout else ''}")


def _start_or_resume(cfg: TrainConfig, resume: bool, progress: bool
                     ) -> tuple[TrainConfig, list[Example], dict[str, np.ndarray]]:
    """The run's config, split and decoded photos: new (scan, split, save ``config.json``) or,
    on resume, read back from the run folder (photos are then decoded in the first epoch)."""
    run = cfg.out
    if resume:
        cfg = TrainConfig.load(run)
        cfg.out = run
        print(f"Resuming {run} (preset {cfg.preset}, {cfg.epochs} epochs)")
        return cfg, load_split(run_file(run, SPLITS_FILE)), {}
    kept = prepare_data(cfg, run, progress)[1]
    cfg.save(run, versions=software_versions())
    return cfg, load_split(run_file(run, SPLITS_FILE)), kept


def _stack(kept: dict[str, np.ndarray], paths: list[str]) -> np.ndarray | None:
    """The kept photos of ``paths``, in order, as one ``(n, size, size, 3) uint8`` array; None
    unless every path was kept."""
    if not paths or any(p not in kept for p in paths):
        return None
    return np.stack([kept[p] for p in paths])


def make_datasets(cfg: TrainConfig, examples: list[Example], kept: dict[str, np.ndarray]):
    """The training and validation datasets (:func:`catsdogs.data.pipeline.make_dataset`).

    Training photos are held at :meth:`TrainConfig.cache_size`; the augmentation crops and
    resizes them to each epoch's size. Photos in ``kept`` (decoded by the scan) are not decoded
    again.

    Returns:
        ``(train_ds, val_ds, augment, steps_per_epoch)``.
    """
    train_paths, train_labels = select(examples, "train")
    val_paths, val_labels = select(examples, "val")
    print(f"Split: {len(train_paths)} train, {len(val_paths)} val, "
          f"{len(select(examples, 'test')[0])} test photos → {run_file(cfg.out, SPLITS_FILE)}")
    augment = AUGMENTATIONS[cfg.augmentation](seed=cfg.seed)
    size = cfg.cache_size()
    outliers = training_outliers(cfg, kept) if cfg.other else None
    train_ds = make_dataset(train_paths, _targets(cfg, train_labels), size, cfg.batch_size,
                            shuffle=True, augment=augment, seed=cfg.seed,
                            images=_stack(kept, train_paths), outliers=outliers,
                            outlier_target=[OUTLIER_TARGET, 0.0])
    val_ds = make_dataset(val_paths, _targets(cfg, val_labels), cfg.image_size, cfg.batch_size,
                          images=_stack(kept, val_paths) if cfg.image_size == size else None)
    n_train = len(train_paths) + (0 if outliers is None else len(outliers))
    return train_ds, val_ds, augment, int(np.ceil(n_train / cfg.batch_size))


def _targets(cfg: TrainConfig, labels: list[int]) -> np.ndarray:
    """Training targets of cat and dog photos: ``(n, 1)`` P(dog), or with a pet head (training
    with other photos) ``(n, 2)`` [P(dog), P(pet) = 1]."""
    y = np.asarray(labels, np.float32).reshape(-1, 1)
    return np.concatenate([y, np.ones_like(y)], axis=1) if cfg.other else y


def model_kwargs(cfg: TrainConfig) -> dict:
    """Builder options: :attr:`TrainConfig.model_kwargs`, plus a pet head with ``other``."""
    return {**cfg.model_kwargs, **({"pet_head": True} if cfg.other else {})}


def training_outliers(cfg: TrainConfig, kept: dict[str, np.ndarray]) -> np.ndarray:
    """The outliers training mixes in: the train split of ``other.csv`` (decoded again on
    resume) plus :attr:`TrainConfig.other_synthetic` synthetic ones, ``(m, size, size, 3)
    uint8`` at :meth:`TrainConfig.cache_size`."""
    size = cfg.cache_size()
    paths = [e.path for e in load_other_split(run_file(cfg.out, OTHER_SPLITS_FILE))
             if e.split == "train"]
    missing = ResizedPhotos(size)
    for p in paths:
        if p not in kept:
            missing(p, load_image(p))
    decoded = {**kept, **missing.finish()}
    photos = [decoded[p] for p in paths]
    synthetic = synthetic_outliers(cfg.other_synthetic, size, seed=cfg.seed)
    print(f"Outliers: {len(photos)} other photos + {len(synthetic)} synthetic, target "
          f"P(pet) = 0 and P(dog) = {OUTLIER_TARGET} (weight {cfg.other_weight})")
    return np.concatenate([np.stack(photos), synthetic]) if photos else synthetic


@keras.saving.register_keras_serializable(package="catsdogs")
class PetAccuracy(keras.metrics.BinaryAccuracy):
    """Binary cat-vs-dog accuracy of P(dog) (column 0) over the cat and dog photos of a batch
    only: with a pet head, rows whose P(pet) target (column 1) is 0 are outliers and are left
    out, so ``accuracy`` in ``history.csv`` means the same with ``--other`` as without."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        if y_true.shape[-1] == 2:
            weight = y_true[:, 1:2]
            return super().update_state(y_true[:, 0:1], y_pred[:, 0:1], sample_weight=weight)
        return super().update_state(y_true, y_pred, sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="catsdogs")
class DogAndPetLoss(keras.losses.Loss):
    """Binary cross-entropy of P(dog) and of P(pet), for a model with a pet head.

    Targets ``(batch, 2)``: [P(dog), P(pet)]. Cat and dog photos (P(pet) = 1) add the usual
    P(dog) cross-entropy; outliers (P(pet) = 0) add, with weight ``outlier_weight``, the
    cross-entropy of P(dog) against 0.5 (outlier exposure's uniform target, Hendrycks et al.
    2019, arXiv:1812.04606); every photo adds the P(pet) cross-entropy.
    """

    def __init__(self, outlier_weight: float = 0.5, label_smoothing: float = 0.0,
                 name: str = "dog_and_pet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.outlier_weight, self.label_smoothing = outlier_weight, label_smoothing

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        pet = y_true[:, 1]
        dog = keras.losses.binary_crossentropy(y_true[:, 0:1], y_pred[:, 0:1],
                                               label_smoothing=self.label_smoothing)
        is_pet = keras.losses.binary_crossentropy(y_true[:, 1:2], y_pred[:, 1:2])
        return (pet + (1.0 - pet) * self.outlier_weight) * dog + is_pet

    def get_config(self):
        return {**super().get_config(), "outlier_weight": self.outlier_weight,
                "label_smoothing": self.label_smoothing}


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    """The learning rate, a float (``constant``) or a Keras schedule (``cosine``: linear warm-up
    then cosine decay to 0; Loshchilov & Hutter 2017, "SGDR", arXiv:1608.03983; warm-up: Goyal
    et al. 2017, arXiv:1706.02677).

    Raises:
        ConfigError: unknown schedule.
    """
    if cfg.schedule == "constant":
        return cfg.learning_rate
    if cfg.schedule == "cosine":
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        total = cfg.epochs * steps_per_epoch
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg.learning_rate / 10 if warmup else cfg.learning_rate,
            decay_steps=max(1, total - warmup), alpha=0.0,
            warmup_target=cfg.learning_rate if warmup else None, warmup_steps=warmup)
    raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose constant or cosine")


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Compile with the configured optimizer, learning-rate schedule and binary cross-entropy.

    Raises:
        ConfigError: unknown optimizer or schedule.
    """
    lr = learning_rate(cfg, steps_per_epoch)
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(lr)
    elif cfg.optimizer == "adamw":  # Loshchilov & Hutter 2019, arXiv:1711.05101
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    else:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose adam or adamw")
    loss = (DogAndPetLoss(cfg.other_weight, cfg.label_smoothing) if cfg.other
            else keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing))
    model.compile(optimizer=opt, loss=loss,
                  metrics=[PetAccuracy(name="accuracy")],
                  jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)


def build_for_training(cfg: TrainConfig, steps_per_epoch: int) -> tuple[keras.Model, str]:
    """Build and compile the model in the configured precision, under a ``tf.distribute``
    strategy scope (the default strategy).

    Returns:
        ``(model, precision)`` with precision ``"float32"`` or ``"mixed_bfloat16"``.
    """
    precision = resolve_precision(cfg.precision)
    trains_at = (f", trained at {' → '.join(map(str, cfg.train_sizes))} px"
                 if cfg.train_sizes else "")
    print(f"Model {cfg.model} at {cfg.image_size} px{trains_at}, {precision} compute, "
          f"{'XLA' if cfg.jit_compile else 'no XLA'}")
    keras.mixed_precision.set_global_policy(precision)
    try:
        with tf.distribute.get_strategy().scope():
            model = build_model(cfg.model, cfg.image_size, **model_kwargs(cfg))
            compile_model(model, cfg, steps_per_epoch)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # The pipeline resizes every batch already: the model must not resize training batches
    # of a progressive-resizing stage to image_size.
    model.get_layer("resize").passthrough = True
    return model, precision


def make_callbacks(cfg: TrainConfig, augment, resume: bool) -> list[keras.callbacks.Callback]:
    """NaN guard, progressive resizing, ``history.csv``, the best-weights checkpoint,
    TensorBoard logs and, last, the resumable backup."""
    run = cfg.out
    checkpoint = AtomicModelCheckpoint(run_file(run, BEST_WEIGHTS), monitor="val_loss", mode="min",
                                       save_best_only=True, save_weights_only=True)
    if resume and (validated := validated_rows(read_history(run_file(run, HISTORY_FILE)))):
        checkpoint.best = min(float(r["val_loss"]) for r in validated)
    return [
        keras.callbacks.TerminateOnNaN(),
        *([ProgressiveResize(cfg, augment)] if cfg.train_sizes else []),
        HistoryCSV(run_file(run, HISTORY_FILE)),
        checkpoint,
        # Scalars per epoch (loss, accuracy, val_*, learning rate); no graph, no profiling.
        keras.callbacks.TensorBoard(run_file(run, LOGS_DIR), write_graph=False, update_freq="epoch",
                                    profile_batch=0),
        # Last: the backup marks an epoch complete only after history and checkpoint are written.
        # It is kept until model.keras is saved, so a crash in between resumes without retraining.
        keras.callbacks.BackupAndRestore(run_file(run, BACKUP_DIR), double_checkpoint=True,
                                         delete_checkpoint=False),
    ]


def save_trained_model(model: keras.Model, cfg: TrainConfig, precision: str) -> keras.Model:
    """Load the best validated weights, write ``model.keras`` atomically (float32 compute: exact
    and portable) and remove the training backup.

    Returns:
        The saved (float32) model.
    """
    run = cfg.out
    model.get_layer("resize").passthrough = False
    if os.path.exists(run_file(run, BEST_WEIGHTS)):
        model.load_weights(run_file(run, BEST_WEIGHTS))
    if precision != "float32":
        trained = model
        model = build_model(cfg.model, cfg.image_size, **model_kwargs(cfg))
        model.set_weights(trained.get_weights())
    with atomic_path(run_file(run, MODEL_FILE), suffix=".keras") as tmp:
        model.save(tmp)
    shutil.rmtree(run_file(run, BACKUP_DIR), ignore_errors=True)
    print(f"Saved {run_file(run, MODEL_FILE)} (best epoch by validation loss)")
    return model


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, clock: dict[str, float] | None = None) -> keras.Model | None:
    """Train a model into the run folder ``cfg.out`` and save it as ``model.keras``.

    Args:
        cfg: settings (with ``resume``, the run folder's own ``config.json`` is used instead).
        resume: continue an interrupted run from its last completed epoch.
        overwrite: delete an existing run folder first.
        progress: show progress bars (otherwise one line per epoch).
        clock: filled with ``time.perf_counter()`` marks ``start``, ``data``, ``setup``, ``fit``,
            ``save`` (:func:`catsdogs.runfolder.write_timings`).

    Returns:
        The trained float32 model, or None when resuming a run whose training had already
        finished (only its evaluation is left).

    Raises:
        DataError: the photo folder is unusable.
        RunError: the run folder exists (without ``resume``/``overwrite``) or cannot be resumed;
            :class:`TrainingInterrupted` on Ctrl-C.
        ConfigError: a setting that cannot train (:func:`check_config`).
    """
    clock = clock if clock is not None else {}
    clock["start"] = time.perf_counter()
    check_config(cfg)
    prepare_run_folder(cfg.out, resume, overwrite)
    if resume and training_finished(cfg.out):
        print(f"Resuming {cfg.out}: training is complete; only the evaluation is left")
        return None
    cfg, examples, kept = _start_or_resume(cfg, resume, progress)
    clock["data"] = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    train_ds, val_ds, augment, steps = make_datasets(cfg, examples, kept)
    kept.clear()
    model, precision = build_for_training(cfg, steps)
    if cfg.val_every > 1:
        print(f"Validating after epochs {', '.join(map(str, cfg.validation_epochs()))}")
    callbacks = make_callbacks(cfg, augment, resume)
    clock["setup"] = time.perf_counter()
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
                  validation_freq=cfg.validation_epochs(), shuffle=False,
                  verbose=1 if progress else 2)
    except KeyboardInterrupt:
        raise TrainingInterrupted(cfg.out, run_file(cfg.out, BACKUP_DIR)) from None
    clock["fit"] = time.perf_counter()
    model = save_trained_model(model, cfg, precision)
    clock["save"] = time.perf_counter()
    return model
