"""Training: scan → deduplicate → split → tf.data → fit (checkpoints, resume) → ``model.keras``.

The flow follows the keras-io example "Image classification from scratch"
(https://keras.io/examples/vision/image_classification_from_scratch/); checkpointing and resume
use Keras callbacks (``BackupAndRestore``, ``ModelCheckpoint``, ``TensorBoard``,
https://keras.io/api/callbacks/). This module trains only: :func:`catsdogs.api.train` runs
:func:`train` and then the test evaluation (:func:`catsdogs.evaluate.evaluate_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from catsdogs.augment import AUGMENTATIONS
from catsdogs.backbones import BACKBONES, resolve_weights
from catsdogs.budget import BudgetPlan, reserve_seconds
from catsdogs.cache import (
    choose_cache,
    disk_photos,
    record,
    remove_cache,
    saved_choice,
    scanning_to_disk,
    uses_disk,
)
from catsdogs.callbacks import (
    AtomicModelCheckpoint,
    FollowBudget,
    HistoryCSV,
    PlannedValidation,
    ProgressiveResize,
    StepProgbar,
)
from catsdogs.config import TrainConfig
from catsdogs.constants import CLASSES, VERSION
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
from catsdogs.distributed import (
    PEER_ERRORS,
    AverageStatistics,
    Cluster,
    FollowChief,
    PlanAgreement,
    Shared,
    distribute,
    fingerprint,
    heartbeat_timeout,
    make_strategy,
    prepare_model,
    remove_worker_folder,
    scan_share,
    shard,
    worker_folder,
    worker_lost,
)
from catsdogs.errors import ConfigError, DataError, RunError, TrainingInterrupted
from catsdogs.io import atomic_path
from catsdogs.models import available_models, build_model
from catsdogs.runfolder import (
    BACKUP_DIR,
    BEST_WEIGHTS,
    HEAD_BACKUP_DIR,
    HEAD_WEIGHTS,
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
from catsdogs.system import (
    choose_precision,
    cpu_has_bf16,
    resolve_precision,
    software_versions,
)
from catsdogs.transfer import fine_tune_config, freeze_backbone, unfreeze_top


def check_config(cfg: TrainConfig) -> None:
    """Fail fast, before the scan, on settings that cannot train.

    Raises:
        ConfigError: unknown model or augmentation, ``train_sizes`` with an augmentation that
            cannot resize (``tutorial``), ``val_every`` below 1, backbone weights that cannot
            be found (:func:`catsdogs.backbones.resolve_weights`) or for a model without a
            backbone, ``head_epochs`` without weights or with a time budget.
        DataError: ``other`` is set but is not a folder.
    """
    cfg.validation_epochs()

    if cfg.model not in available_models():
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {available_models()}")
    _check_weights(cfg)
    if cfg.augmentation not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {cfg.augmentation!r}; choose one of "
                          f"{sorted(AUGMENTATIONS)}")
    if cfg.other and not os.path.isdir(cfg.other):
        raise DataError(f"{cfg.other}: no such folder of other photos (--other)")
    if cfg.train_sizes and not hasattr(AUGMENTATIONS[cfg.augmentation](), "set_output_size"):
        raise ConfigError(f"train_sizes (progressive resizing) needs an augmentation that can "
                          f"change the image size; {cfg.augmentation!r} cannot")


def _check_weights(cfg: TrainConfig) -> None:
    """The ``weights`` / ``head_epochs`` part of :func:`check_config`."""
    pretrained = cfg.weights not in ("", "none")
    if pretrained and cfg.model not in BACKBONES:
        raise ConfigError(f"--weights {cfg.weights}: model {cfg.model!r} has no pretrained "
                          f"backbone; choose one of {sorted(BACKBONES)} or --weights none")
    if cfg.head_epochs and not pretrained:
        raise ConfigError("head_epochs (transfer learning) needs pretrained weights: "
                          "--weights imagenet or --weights PATH")
    if cfg.head_epochs and cfg.time_budget:
        raise ConfigError("two-stage transfer learning (head_epochs) trains a fixed number of "
                          "epochs: pass --epochs N or --time-budget none")
    if cfg.model in BACKBONES:
        resolve_weights(cfg.model, cfg.weights)


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


def prepare_data(cfg: TrainConfig, run: str, progress: bool,
                 keep: ResizedPhotos | None = None, shared: Shared | None = None
                 ) -> tuple[ScanResult, dict[str, np.ndarray]]:
    """Scan, deduplicate, limit and split the photos; write ``scan.json`` and ``splits.csv``.

    Args:
        keep: where the scan puts each photo resized (default: a new :class:`ResizedPhotos`
            at :meth:`TrainConfig.cache_size`, in memory; ``--cache disk`` passes a
            :class:`catsdogs.data.pipeline.StoredPhotos`).
        shared: a multi-worker scan, ``(share, agree)`` (:func:`catsdogs.data.scan.inspect_all`):
            each worker decodes its share of the files, all agree on the unreadable ones, and
            all make the same split. No photo is kept then (each worker decodes its training
            shard later, once).

    Returns:
        The scan, and the photos ``keep`` holds in memory: every readable photo resized to
        :meth:`TrainConfig.cache_size`, by path (``(size, size, 3) uint8``), so training need
        not decode the files again (``{}`` when ``keep`` wrote them to disk).

    Raises:
        DataError: the folder is unusable (missing, empty, one class only, …).
    """
    resized = keep if keep is not None else ResizedPhotos(cfg.cache_size())
    share, agree = shared or (None, None)
    result = scan_folder(cfg.data, progress=progress, keep=None if shared else resized,
                         share=share, agree=agree)
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
        _prepare_other(cfg, run, None if shared else resized, progress, shared)
    return result, resized.finish()


def _prepare_other(cfg: TrainConfig, run: str, keep: ResizedPhotos | None, progress: bool,
                   shared: Shared | None = None) -> None:
    """Scan ``cfg.other`` (photos kept resized by ``keep``), hold one kind out, split the rest
    and write ``other.csv``.

    Raises:
        DataError: the folder is unusable or the held-out kind does not exist.
    """
    share, agree = shared or (None, None)
    photos, skipped = scan_other(cfg.other, keep=keep, progress=progress, share=share,
                                 agree=agree)
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


def _start_or_resume(cfg: TrainConfig, resume: bool, progress: bool,
                     shared: Shared | None = None
                     ) -> tuple[TrainConfig, list[Example], dict[str, np.ndarray]]:
    """The run's config, split and decoded photos: new (choose the cache, scan, split, save
    ``config.json``) or, on resume, read back from the run folder (photos in memory are then
    decoded in the first epoch; a disk cache is reused, :mod:`catsdogs.cache`)."""
    run = cfg.out
    if resume:
        cfg = TrainConfig.load(run)
        cfg.out = run
        length = (f"a {cfg.time_budget:g}-minute budget" if cfg.time_budget
                  else f"{cfg.epochs} epochs")
        print(f"Resuming {run} (preset {cfg.preset}, {length})")
        print(saved_choice(cfg).line())
        if cfg.precision_choice:
            print(f"Precision: {cfg.precision} (as when the run started: "
                  f"{cfg.precision_choice['reason']})")
        if cfg.precision == "mixed_bfloat16" and not cpu_has_bf16():
            print("Warning: this run trains in bfloat16, which this CPU has no native "
                  "instructions for: it will be slow here (resume it where it started)")
        return cfg, load_split(run_file(run, SPLITS_FILE)), {}
    choice = choose_cache(cfg)
    print(choice.line())
    record(cfg, choice)
    # A multi-worker scan decodes only its share: the disk store is filled later, per shard.
    to_disk = choice.mode == "disk" and not shared
    with (scanning_to_disk(cfg) if to_disk else contextlib.nullcontext()) as keep:
        kept = prepare_data(cfg, run, progress, keep, shared)[1]
    cfg.save(run, versions=software_versions())
    return cfg, load_split(run_file(run, SPLITS_FILE)), kept


def _stack(kept: dict[str, np.ndarray], paths: list[str]) -> np.ndarray | None:
    """The kept photos of ``paths``, in order, as one ``(n, size, size, 3) uint8`` array; None
    unless every path was kept."""
    if not paths or any(p not in kept for p in paths):
        return None
    return np.stack([kept[p] for p in paths])


def make_datasets(cfg: TrainConfig, examples: list[Example], kept: dict[str, np.ndarray],
                  cluster: Cluster | None = None):
    """The training and validation datasets (:func:`catsdogs.data.pipeline.make_dataset`).

    Training photos are held at :meth:`TrainConfig.cache_size`; the augmentation crops and
    resizes them to each epoch's size. Photos in ``kept`` (decoded by the scan) are not decoded
    again. With a disk cache (``cfg.cache_choice``), the photos are read from the run's store
    (:func:`catsdogs.cache.disk_photos`): the same batches in the same order. With a
    ``cluster``, each dataset holds this worker's shard only (:func:`catsdogs.distributed.
    shard`, taken from the paths, before decoding).

    Returns:
        ``(train_ds, val_ds, augment, steps_per_epoch)``; steps per epoch of this worker.
    """
    train_paths, train_labels = (shard(v, cluster) for v in select(examples, "train"))
    val_paths, val_labels = (shard(v, cluster) for v in select(examples, "val"))
    print(f"Split: {len(select(examples, 'train')[0])} train, {len(select(examples, 'val')[0])} "
          f"val, {len(select(examples, 'test')[0])} test photos → "
          f"{run_file(cfg.out, SPLITS_FILE)}")
    if cluster:
        print(f"Worker {cluster.rank} of {cluster.size}: {len(train_paths)} train and "
              f"{len(val_paths)} val photos (1 in {cluster.size})")
    augment = AUGMENTATIONS[cfg.augmentation](seed=cfg.seed)
    size = cfg.cache_size()
    if uses_disk(cfg):
        train_images, val_images, outliers, synthetic = disk_photos(cfg, examples, cluster)
        if outliers is not None:
            _print_outliers(cfg, len(outliers) - synthetic, synthetic)
    else:
        outliers = shard(training_outliers(cfg, kept), cluster) if cfg.other else None
        train_images = _stack(kept, train_paths)
        val_images = _stack(kept, val_paths) if cfg.image_size == size else None
    train_ds = make_dataset(train_paths, _targets(cfg, train_labels), size, cfg.batch_size,
                            shuffle=True, augment=augment, seed=cfg.seed,
                            images=train_images, outliers=outliers,
                            outlier_target=[OUTLIER_TARGET, 0.0])
    val_ds = make_dataset(val_paths, _targets(cfg, val_labels), cfg.image_size, cfg.batch_size,
                          images=val_images)
    n_train = len(train_paths) + (0 if outliers is None else len(outliers))
    return train_ds, val_ds, augment, int(np.ceil(n_train / cfg.batch_size))


def _targets(cfg: TrainConfig, labels: list[int]) -> np.ndarray:
    """Training targets of cat and dog photos: ``(n, 1)`` P(dog), or with a pet head (training
    with other photos) ``(n, 2)`` [P(dog), P(pet) = 1]."""
    y = np.asarray(labels, np.float32).reshape(-1, 1)
    return np.concatenate([y, np.ones_like(y)], axis=1) if cfg.other else y


def model_kwargs(cfg: TrainConfig, weights: bool = True) -> dict:
    """Builder options: :attr:`TrainConfig.model_kwargs`, plus a pet head with ``other``, and
    for a backbone model its :attr:`TrainConfig.weights` (left out without ``weights``: the
    architecture only, weights set afterwards)."""
    kwargs = {**cfg.model_kwargs, **({"pet_head": True} if cfg.other else {})}
    if cfg.model in BACKBONES:
        kwargs["pretrained"] = cfg.weights not in ("", "none")
        if weights:
            kwargs["weights"] = cfg.weights
    return kwargs


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
    _print_outliers(cfg, len(photos), len(synthetic))
    return np.concatenate([np.stack(photos), synthetic]) if photos else synthetic


def _print_outliers(cfg: TrainConfig, photos: int, synthetic: int) -> None:
    print(f"Outliers: {photos} other photos + {synthetic} synthetic, target "
          f"P(pet) = 0 and P(dog) = {OUTLIER_TARGET} (weight {cfg.other_weight})")


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


@keras.saving.register_keras_serializable(package="catsdogs")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from a tenth of the peak to the peak, then cosine decay to 0 at the last
    step (Loshchilov & Hutter 2017, "SGDR", arXiv:1608.03983; warm-up: Goyal et al. 2017,
    arXiv:1706.02677) — the numbers of Keras' ``CosineDecay(warmup_target=…, alpha=0)``, but
    with the warm-up and total lengths held in variables, so a time-budget run
    (:mod:`catsdogs.budget`) can re-plan them while training and the rate still reaches 0 at
    the step training stops.

    Args:
        peak: peak learning rate.
        warmup_steps: optimizer steps of the warm-up (0: none).
        total_steps: optimizer steps of the whole schedule.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = tf.Variable(float(warmup_steps), trainable=False, name="warmup")
        self.total_steps = tf.Variable(float(total_steps), trainable=False, name="total")
        self._traced = None  # (graph, step, rate) of the step being traced: see __call__

    def set_length(self, warmup_steps: int, total_steps: int) -> None:
        """Change the warm-up and total lengths, in optimizer steps."""
        self.warmup_steps.assign(float(warmup_steps))
        self.total_steps.assign(float(total_steps))

    def __call__(self, step):
        """The rate at optimizer step ``step`` (a scalar tensor or variable), ``float32``.

        While a step is traced, the rate is built once per graph and step variable and then
        reused: Keras' AdamW reads ``optimizer.learning_rate`` once per weight for the weight
        decay (``_apply_weight_decay`` in keras/src/backend/tensorflow/optimizer.py), which
        otherwise put ~90 copies of this schedule into every traced training step. The copies
        would all read the same values: the step counter is incremented after the updates."""
        if tf.executing_eagerly():
            return self._rate(step)
        graph = tf.compat.v1.get_default_graph()
        memo = self._traced
        if memo is None or memo[0] is not graph or memo[1] is not step:
            memo = self._traced = (graph, step, self._rate(step))
        return memo[2]

    def _rate(self, step):
        step = tf.cast(step, tf.float32)
        warmup, total = self.warmup_steps, self.total_steps
        start = self.peak / 10.0
        warm = start + (self.peak - start) * step / tf.maximum(warmup, 1.0)
        done = tf.clip_by_value((step - warmup) / tf.maximum(total - warmup, 1.0), 0.0, 1.0)
        decay = 0.5 * self.peak * (1.0 + tf.cos(np.pi * done))
        return tf.where(step < warmup, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": float(self.warmup_steps.numpy()),
                "total_steps": float(self.total_steps.numpy())}


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up length, optimizer steps: :attr:`TrainConfig.warmup_epochs` epochs, at most a
    tenth of a time-budget run's planned steps (a short budget must not be all warm-up)."""
    steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    return min(steps, total_steps // 10) if cfg.time_budget else steps


def learning_rate(cfg: TrainConfig, steps_per_epoch: int, total_steps: int | None = None):
    """The learning rate: a float (``constant``) or a :class:`WarmupCosine` (``cosine``) over
    ``total_steps`` (default: :attr:`TrainConfig.epochs` epochs).

    Raises:
        ConfigError: unknown schedule.
    """
    if cfg.schedule == "constant":
        return cfg.learning_rate
    if cfg.schedule == "cosine":
        total = total_steps or cfg.epochs * steps_per_epoch
        return WarmupCosine(cfg.learning_rate, warmup_steps(cfg, steps_per_epoch, total), total)
    raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose constant or cosine")


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int, lr=None) -> None:
    """Compile with the configured optimizer, learning rate ``lr`` (default: the configured
    schedule, :func:`learning_rate`) and binary cross-entropy.

    Raises:
        ConfigError: unknown optimizer or schedule.
    """
    lr = learning_rate(cfg, steps_per_epoch) if lr is None else lr
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


def build_for_training(cfg: TrainConfig, steps_per_epoch: int, lr=None,
                       strategy: tf.distribute.Strategy | None = None,
                       announce: bool = True) -> tuple[keras.Model, str]:
    """Build and compile the model in the configured precision, under a ``tf.distribute``
    strategy scope (``strategy``, else the default one), with learning rate ``lr`` (default:
    :func:`learning_rate`); ``announce`` prints what is built. Under a multi-worker strategy
    the model is made trainable with ``fit`` there (:func:`catsdogs.distributed.prepare_model`).

    Returns:
        ``(model, precision)`` with precision ``"float32"`` or ``"mixed_bfloat16"``.
    """
    precision = resolve_precision(cfg.precision)
    trains_at = (f", trained at {' → '.join(map(str, cfg.train_sizes))} px"
                 if cfg.train_sizes else "")
    if announce:
        print(f"Model {cfg.model} at {cfg.image_size} px{trains_at}, {precision} compute, "
              f"{'XLA' if cfg.jit_compile else 'no XLA'}")
    keras.mixed_precision.set_global_policy(precision)
    try:
        with (strategy or tf.distribute.get_strategy()).scope():
            model = build_model(cfg.model, cfg.image_size, **model_kwargs(cfg))
            compile_model(model, cfg, steps_per_epoch, lr=lr)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if strategy is not None:
        prepare_model(model)
    # The pipeline resizes every batch already: the model must not resize training batches
    # of a progressive-resizing stage to image_size.
    model.get_layer("resize").passthrough = True
    return model, precision


def make_callbacks(cfg: TrainConfig, augment, follow: FollowBudget | None = None,
                   backup: str = BACKUP_DIR) -> list[keras.callbacks.Callback]:
    """NaN guard, the time-budget plan (``follow``), progressive resizing, ``history.csv``, the
    best-weights checkpoint (the best so far read back from ``history.csv``: resume, stage 2
    of transfer learning), TensorBoard logs and, last, the resumable backup in ``backup``."""
    run = cfg.out
    checkpoint = AtomicModelCheckpoint(run_file(run, BEST_WEIGHTS), monitor="val_loss", mode="min",
                                       save_best_only=True, save_weights_only=True)
    if validated := validated_rows(read_history(run_file(run, HISTORY_FILE))):
        checkpoint.best = min(float(r["val_loss"]) for r in validated)
    size_of = follow.plan.size if follow is not None else cfg.train_size
    return [
        keras.callbacks.TerminateOnNaN(),
        *([follow] if follow is not None else []),
        *([ProgressiveResize(size_of, augment, cfg.image_size)] if cfg.train_sizes else []),
        HistoryCSV(run_file(run, HISTORY_FILE)),
        checkpoint,
        # Scalars per epoch (loss, accuracy, val_*, learning rate); no graph, no profiling.
        keras.callbacks.TensorBoard(run_file(run, LOGS_DIR), write_graph=False, update_freq="epoch",
                                    profile_batch=0),
        # Last: the backup marks an epoch complete only after history and checkpoint are written.
        # It is kept until model.keras is saved, so a crash in between resumes without retraining.
        keras.callbacks.BackupAndRestore(run_file(run, backup), double_checkpoint=True,
                                         delete_checkpoint=False),
    ]


@dataclasses.dataclass
class Throughput:
    """Training speed measured at the start of a time-budget run (:func:`measure_throughput`).

    Attributes:
        step_seconds: seconds per optimizer step (one batch) at each training side (keys: the
            side in pixels, as a string).
        val_batch_seconds: seconds per validation batch (a forward pass of ``batch_size``
            photos, training precision) at each validation side (same keys).
        seconds: wall time of the measurement, seconds.
        eval_batch: seconds of one evaluation batch after training at each validation side
            (same keys): the saved float32 model's speed (:func:`_measure_eval_batch`); none
            when training in float32 (the validation batch is that speed).
    """

    step_seconds: dict[str, float]
    val_batch_seconds: dict[str, float]
    seconds: float = 0.0
    eval_batch: dict[str, float] = dataclasses.field(default_factory=dict)


PRECISION_STEPS = 4
"""Timed training steps per precision when ``precision="auto"`` chooses (the median counts)."""


def step_seconds(cfg: TrainConfig, precision: str, size: int, steps: int = PRECISION_STEPS
                 ) -> float:
    """Median seconds of one training step of ``cfg``'s net, compiled as for training in
    ``precision``, on a synthetic batch of ``(batch_size, size, size, 3)`` float32 pixel
    values 0–255, after a first step that traces it. The model is built without pretrained
    weights, every layer trainable (a transfer run's frozen stages are not timed apart), and
    dropped afterwards."""
    recipe = dataclasses.replace(cfg, precision=precision, weights="none")
    model = build_for_training(recipe, steps_per_epoch=1000, announce=False)[0]
    rng = np.random.default_rng(cfg.seed)
    x = rng.uniform(0, 255, (cfg.batch_size, size, size, 3)).astype(np.float32)
    y = np.zeros((cfg.batch_size, *model.output.shape[1:]), np.float32)
    model.train_on_batch(x, y)  # traces
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timed_net(cfg: TrainConfig, size: int) -> dict:
    """What :func:`step_seconds` at ``size`` pixels depends on besides the machine and the
    precision: the net (with its pet head when ``other`` is set), the batch, the optimizer and
    XLA, and the catsdogs version (which may change the net); the key of its cached
    timings."""
    return {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "pet_head": bool(cfg.other),
            "batch_size": cfg.batch_size, "size": size, "optimizer": cfg.optimizer,
            "jit_compile": cfg.jit_compile, "catsdogs": VERSION}


def record_precision(cfg: TrainConfig, timed: bool = True) -> TrainConfig:
    """Resolve the run's precision (:func:`catsdogs.system.choose_precision`, timing
    :func:`step_seconds` at the smallest training size unless not ``timed``), print it and
    save it in ``config.json``: :attr:`TrainConfig.precision` becomes the precision trained in
    and :attr:`TrainConfig.precision_choice` records why, so a resumed run keeps both. The
    smallest size is the cheapest to time, and ``default``'s is also a size of the recipe a
    short budget switches to (:meth:`TrainConfig.short_budget_config`). A time budget pays for
    the timing (it counts from the command's start), unless an earlier run timed the same net
    on this machine (:func:`timed_net`; the cache of :func:`catsdogs.system.choose_precision`)."""
    size = min(cfg.train_sizes or [cfg.image_size])
    choice = choose_precision(cfg.precision, lambda p: step_seconds(cfg, p, size), size,
                              cfg.batch_size, timed, key=timed_net(cfg, size))
    print(choice.line())
    cfg = dataclasses.replace(cfg, precision=choice.precision,
                              precision_choice=dataclasses.asdict(choice))
    cfg.save(cfg.out, versions=software_versions())
    return cfg


def measure_throughput(model: keras.Model, train_ds, augment, sizes: list[int],
                       image_sizes: list[int], batch_size: int, calls: int = 4) -> Throughput:
    """Time training steps at each training size, after tracing, on real training batches
    (the input pipeline runs alongside, as in ``fit``); then put the weights and the optimizer
    state back as they were.

    Args:
        model: the compiled model, its ``resize`` layer a passthrough (the model runs at the
            size of its input, as in training).
        train_ds: the training dataset (its augmentation resizes to ``augment``'s output size).
        augment: the training augmentation (``set_output_size`` for each size), or None.
        sizes: training sides, pixels.
        image_sizes: validation sides, pixels.
        batch_size: photos per batch (for the validation batch).
        calls: timed steps per size (the median counts).

    Returns:
        The :class:`Throughput` (without ``eval_batch``).
    """
    t0 = time.perf_counter()
    weights = model.get_weights()
    model.optimizer.build(model.trainable_variables)
    state = [v.numpy() for v in model.optimizer.variables]
    seconds: dict[str, float] = {}
    for size in sizes:
        if hasattr(augment, "set_output_size"):
            augment.set_output_size(size)
        batches = iter(train_ds.repeat())
        model.train_on_batch(*next(batches))  # traces the step at this size
        times = []
        for _ in range(calls):
            t1 = time.perf_counter()
            model.train_on_batch(*next(batches))
            times.append(time.perf_counter() - t1)
        seconds[str(size)] = float(np.median(times))
    val_batch = {}
    for size in image_sizes:
        x = np.zeros((batch_size, size, size, 3), np.float32)
        y = np.zeros((batch_size, *model.output.shape[1:]), np.float32)
        model.test_on_batch(x, y)
        t1 = time.perf_counter()
        model.test_on_batch(x, y)
        val_batch[str(size)] = time.perf_counter() - t1
    model.set_weights(weights)
    for v, value in zip(model.optimizer.variables, state, strict=True):
        v.assign(value)
    return Throughput(seconds, val_batch, time.perf_counter() - t0)


def plan_budget(cfg: TrainConfig, model: keras.Model, train_ds, augment, steps_per_epoch: int,
                examples: list[Example], resume: bool, started: float,
                agree: PlanAgreement | None = None, eval_batch: float | None = None,
                measured: Throughput | None = None) -> BudgetPlan:
    """The time-budget plan of a run: on resume, the saved ``plan.json`` (the same plan, not
    re-measured); else plan the steps that fit in the budget left (:func:`new_plan`) from
    ``measured`` (:func:`_probe_throughput`), or, when not given (several workers: the
    all-reduce included), from :func:`measure_throughput` on ``train_ds``.

    Args:
        started: ``time.perf_counter()`` when the command started; the budget counts from it.
        agree: several workers: every one measures, then all take the chief's plan.
        eval_batch: seconds of one evaluation batch (``batch_size`` photos) after training;
            default: ``measured.eval_batch`` at ``image_size``, else the measured validation
            batch (right when training in float32).

    Raises:
        RunError: a resumed run without a readable ``plan.json``.
    """
    agree = agree or (lambda plan: None)
    if resume:
        plan = BudgetPlan.load(cfg.out)
        agree(plan)
        print(f"Resuming the time-budget plan: {plan.total_steps} steps "
              f"({plan.epochs()} epochs), {plan.spent_seconds / 60:.1f} of "
              f"{plan.budget_seconds / 60:g} min used")
        return plan
    if measured is None:
        measured = measure_throughput(model, train_ds, augment, cfg.train_sizes or
                                      [cfg.image_size], [cfg.image_size], cfg.batch_size)
    plan = new_plan(cfg, steps_per_epoch, examples, measured, started, eval_batch)
    agree(plan)
    planned, step_seconds = plan.planned_steps, plan.step_seconds
    rates = ", ".join(f"{s} px {cfg.batch_size / t:.0f}" for s, t in step_seconds.items())
    print(f"Time budget {cfg.time_budget:g} min: measured photos/s {rates}; planned "
          f"{planned} steps ({planned / steps_per_epoch:.1f} epochs), "
          f"{plan.reserve_seconds:.0f} s kept for the evaluation")
    return plan


def new_plan(cfg: TrainConfig, steps_per_epoch: int, examples: list[Example],
             measured: Throughput, started: float, eval_batch: float | None = None
             ) -> BudgetPlan:
    """The first plan of ``cfg``'s recipe from ``measured`` speeds (which must cover its
    training sizes and ``image_size``): the steps that fit in the budget left after
    ``time.perf_counter() - started`` seconds, and a cap of 1.5× them (plus an epoch) for
    ``fit``. ``eval_batch`` as in :func:`plan_budget`.

    Raises:
        KeyError: ``measured`` lacks one of the recipe's sizes.
    """
    sizes = cfg.train_sizes or [cfg.image_size]
    val_batch = measured.val_batch_seconds[str(cfg.image_size)]
    if eval_batch is None:
        eval_batch = measured.eval_batch.get(str(cfg.image_size), val_batch)
    n_val = len(select(examples, "val")[0])
    plan = BudgetPlan(cfg.budget_seconds, steps_per_epoch, sizes,
                      {str(s): measured.step_seconds[str(s)] for s in sizes},
                      float(val_batch * np.ceil(n_val / cfg.batch_size)),
                      reserve_seconds(_photos_after_training(cfg, examples), cfg.batch_size,
                                      eval_batch),
                      val_every=cfg.val_every, granularity=cfg.steps_per_execution,
                      calibration_seconds=measured.seconds, batch_size=cfg.batch_size)
    plan.planned_steps = plan.replan(0, time.perf_counter() - started)
    plan.max_steps = (int(np.ceil(1.5 * plan.epochs())) + 1) * steps_per_epoch
    return plan


def float32_batch_seconds(cfg: TrainConfig, repeats: int = 2) -> float:
    """Seconds of one forward pass of ``batch_size`` photos at ``image_size`` through the
    run's model in float32 (what ``model.keras`` computes in), after tracing: the fastest of
    ``repeats`` timed passes. Builds a fresh model (the speed does not depend on the weights)."""
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(cfg.model, cfg.image_size, **model_kwargs(cfg, weights=False))
    x = np.zeros((cfg.batch_size, cfg.image_size, cfg.image_size, 3), np.float32)
    model.predict_on_batch(x)  # traces
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - t0)
    return min(times)


def _photos_after_training(cfg: TrainConfig, examples: list[Example]) -> int:
    """Model passes after the last training step: the validation split (rejection threshold)
    and the test split, twice each with test-time flips; with ``other`` also the other photos
    not trained on and the synthetic test outliers (about 800)."""
    n = sum(e.split in ("val", "test") for e in examples)
    if cfg.other:
        n += sum(e.split != "train" for e in load_other_split(run_file(cfg.out, OTHER_SPLITS_FILE)))
        n += 800
    return n * (2 if cfg.inference.tta else 1)


def save_trained_model(model: keras.Model, cfg: TrainConfig, precision: str,
                       rebuild: bool = False) -> keras.Model:
    """Load the best validated weights, write ``model.keras`` atomically (float32 compute: exact
    and portable) and remove the training backup and the disk cache. The saved model is a new
    one (the weights copied) when ``precision`` is not float32 or with ``rebuild`` (a model
    built under a multi-worker strategy).

    Returns:
        The saved (float32) model.
    """
    run = cfg.out
    model.get_layer("resize").passthrough = False
    if os.path.exists(run_file(run, BEST_WEIGHTS)):
        model.load_weights(run_file(run, BEST_WEIGHTS))
    if precision != "float32" or rebuild:
        trained = model
        model = build_model(cfg.model, cfg.image_size, **model_kwargs(cfg, weights=False))
        model.set_weights(trained.get_weights())
    with atomic_path(run_file(run, MODEL_FILE), suffix=".keras") as tmp:
        model.save(tmp)
    shutil.rmtree(run_file(run, BACKUP_DIR), ignore_errors=True)
    remove_cache(run)
    print(f"Saved {run_file(run, MODEL_FILE)} (best epoch by validation loss)")
    return model


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, clock: dict[str, float] | None = None,
          cluster: Cluster | None = None) -> keras.Model | None:
    """Train a model into the run folder ``cfg.out`` and save it as ``model.keras``.

    Args:
        cfg: settings (with ``resume``, the run folder's own ``config.json`` is used instead).
        resume: continue an interrupted run from its last completed epoch.
        overwrite: delete an existing run folder first.
        progress: show progress bars (otherwise one line per epoch).
        clock: filled with ``time.perf_counter()`` marks ``start`` (kept when given: a time
            budget counts from it), ``data``, ``setup``, ``fit``, ``save``
            (:func:`catsdogs.runfolder.write_timings`).
        cluster: train on several machines (:mod:`catsdogs.distributed`); this process's part.
            A worker other than the chief trains in :func:`catsdogs.distributed.worker_folder`,
            deletes it at the end and returns None.

    Returns:
        The trained float32 model, or None when resuming a run whose training had already
        finished (only its evaluation is left) and on a worker other than the chief.

    Raises:
        DataError: the photo folder is unusable.
        RunError: the run folder exists (without ``resume``/``overwrite``) or cannot be resumed;
            :class:`TrainingInterrupted` on Ctrl-C.
        ConfigError: a setting that cannot train (:func:`check_config`).
    """
    clock = clock if clock is not None else {}
    clock.setdefault("start", time.perf_counter())
    strategy = make_strategy(cluster) if cluster else None  # before any other TensorFlow op
    check_config(cfg)
    cfg = for_workers(cfg, cluster) if cluster else cfg
    prepare_run_folder(cfg.out, resume, overwrite)
    if resume and training_finished(cfg.out):
        print(f"Resuming {cfg.out}: training is complete; only the evaluation is left")
        return None
    shared = scan_share(strategy, cluster) if cluster else None
    cfg, examples, kept = _start_or_resume(cfg, resume, progress, shared)
    clock["data"] = time.perf_counter()
    if cfg.precision == "auto":  # a new run, or one stopped before its precision was saved
        cfg = record_precision(cfg, timed=cluster is None)
    cfg, (train_ds, val_ds, augment, steps), model, precision, lr, measured = \
        _datasets_and_model(cfg, examples, kept, resume, clock["start"], strategy, cluster)
    workers = (strategy, cluster) if cluster else None
    follow = _follow_budget(cfg, model, train_ds, augment, steps, examples, resume, lr,
                            clock["start"], workers, measured) if cfg.time_budget else None
    epochs, validation = _epochs(cfg, follow, steps)
    clock["setup"] = time.perf_counter()
    if cfg.head_epochs:  # the fit stage covers both stages of transfer learning
        _train_head(model, cfg, (train_ds, val_ds), augment, steps, progress, workers)
        validation = [e for e in validation if e > cfg.head_epochs]
    _fit(model, cfg, (train_ds, val_ds), epochs, validation,
         make_callbacks(cfg, augment, follow), progress, initial_epoch=cfg.head_epochs,
         workers=workers)
    clock["fit"] = time.perf_counter()
    model = _save_or_leave(model, cfg, precision, cluster)
    clock["save"] = time.perf_counter()
    return model


def _datasets_and_model(cfg: TrainConfig, examples: list[Example], kept: dict[str, np.ndarray],
                        resume: bool, started: float,
                        strategy: tf.distribute.Strategy | None, cluster: Cluster | None):
    """For a new time-budget run, first the training speed (:func:`_probe_throughput`; with
    a recipe to switch to, :func:`_choose_recipe`); then the datasets (:func:`make_datasets`),
    the compiled model and its learning rate, once, for the recipe trained with. ``kept`` is
    emptied at the end.

    Returns:
        ``(cfg, (train_ds, val_ds, augment, steps_per_epoch), model, precision, lr, measured)``:
        ``cfg`` the recipe trained with; ``measured`` its :class:`Throughput`, or None: fixed
        epochs, a resumed run (its saved plan) or several workers (:func:`_follow_budget`
        measures under their strategy).
    """
    measured = None
    if cfg.time_budget and not (resume or cluster):
        cfg, measured = (_choose_recipe(cfg, examples, kept, started) if cfg.short_budget_preset
                         else (cfg, _probe_throughput(cfg, examples, kept, cfg.train_sizes or
                                                      [cfg.image_size], [cfg.image_size])))
        _measure_eval_batch(cfg, measured)
    keras.utils.set_random_seed(cfg.seed)
    train_ds, val_ds, augment, steps = make_datasets(cfg, examples, kept, cluster)
    lr = cfg.learning_rate if cfg.head_epochs else learning_rate(cfg, steps)
    model, precision = build_for_training(cfg, steps, lr, strategy)
    kept.clear()
    return cfg, (train_ds, val_ds, augment, steps), model, precision, lr, measured


def _save_or_leave(model: keras.Model, cfg: TrainConfig, precision: str,
                   cluster: Cluster | None) -> keras.Model | None:
    """After the last step: save ``model.keras`` (:func:`save_trained_model`) and return the
    saved model; on several workers each first prints its weights' fingerprint, and a worker
    other than the chief deletes its own folder instead and returns None."""
    if cluster:
        print(f"Worker {cluster.rank}: training finished, weights {fingerprint(model)}")
        if not cluster.is_chief:  # the chief saves the model
            remove_worker_folder(cfg.out, cluster)
            return None
    return save_trained_model(model, cfg, precision, rebuild=cluster is not None)


def _epochs(cfg: TrainConfig, follow: FollowBudget | None, steps: int) -> tuple[int, list]:
    """``fit``'s last epoch and validation epochs: the plan's with a time budget, else the
    configured ones (printed when not every epoch is validated)."""
    if follow:
        return follow.plan.max_steps // steps, PlannedValidation(follow.plan)
    if cfg.val_every > 1:
        print(f"Validating after epochs {', '.join(map(str, cfg.validation_epochs()))}")
    return cfg.epochs, cfg.validation_epochs()


def for_workers(cfg: TrainConfig, cluster: Cluster) -> TrainConfig:
    """The settings of this worker: its own folder (:func:`catsdogs.distributed.worker_folder`),
    one step per compiled call (:mod:`catsdogs.distributed`), and the learning rate scaled by
    the number of workers for a global batch of ``batch_size × workers`` photos (the linear
    scaling rule, with the warm-up the schedule already has: Goyal et al. 2017, "Accurate,
    Large Minibatch SGD", arXiv:1706.02677). A resumed run reads its saved settings instead."""
    cfg = dataclasses.replace(cfg, out=worker_folder(cfg.out, cluster.rank),
                              steps_per_execution=1,
                              learning_rate=cfg.learning_rate * cluster.size)
    print(f"{cluster.size} workers ({', '.join(cluster.addresses)}); this is worker "
          f"{cluster.rank}{' (chief)' if cluster.is_chief else ''}. Global batch "
          f"{cfg.batch_size * cluster.size} = {cluster.size} × {cfg.batch_size}; peak learning "
          f"rate {cfg.learning_rate:g} (× {cluster.size}, linear scaling rule); a worker "
          f"silent for {heartbeat_timeout():g} s stops them all")
    return cfg


def _fit(model: keras.Model, cfg: TrainConfig, data: tuple, epochs: int, validation: list[int],
         callbacks: list, progress: bool, initial_epoch: int = 0,
         workers: tuple[tf.distribute.Strategy, Cluster] | None = None) -> None:
    """``model.fit`` on ``data`` = (train, validation) datasets up to epoch ``epochs``; with
    ``workers`` = (strategy, cluster), this worker's part of a multi-worker fit (its shards as
    the strategy's input, every worker starting from the chief's state, batch-norm statistics
    averaged: :class:`catsdogs.distributed.FollowChief`, :class:`~catsdogs.distributed.
    AverageStatistics`).

    Raises:
        TrainingInterrupted: Ctrl-C (the last completed epoch is in the backup).
        RunError: another worker failed or cannot be reached (multi-worker).
    """
    # Keras' BackupAndRestore restores an epoch into model._initial_epoch, which fit then
    # prefers to its initial_epoch argument; a restore in an earlier fit of this model (stage 1
    # of transfer learning) must not carry over into this one.
    model._initial_epoch = None
    scope = contextlib.nullcontext()
    if workers:
        strategy, cluster = workers
        data = tuple(distribute(strategy, d) for d in data)
        callbacks = [AverageStatistics(strategy), *callbacks,
                     FollowChief(strategy, cluster, initial_epoch)]
        scope = strategy.scope()
    try:
        with scope:
            model.fit(data[0], validation_data=data[1], epochs=epochs,
                      initial_epoch=initial_epoch, callbacks=[*callbacks, StepProgbar()],
                      validation_freq=validation, shuffle=False, verbose=1 if progress else 2)
    except KeyboardInterrupt:
        raise TrainingInterrupted(cfg.out, run_file(cfg.out, BACKUP_DIR)) from None
    except PEER_ERRORS as exc:
        if workers:
            raise worker_lost(workers[1], exc) from exc
        raise


def _train_head(model: keras.Model, cfg: TrainConfig, data: tuple, augment, steps: int,
                progress: bool, workers=None) -> None:
    """Transfer learning (:mod:`catsdogs.transfer`): stage 1, the first ``head_epochs`` epochs
    with the backbone frozen (skipped when a resumed run has finished it: its weights are
    loaded instead), then unfreeze the top of the backbone and compile stage 2."""
    head = run_file(cfg.out, HEAD_WEIGHTS)
    trainable = freeze_backbone(model)
    if os.path.exists(head):
        model.load_weights(head)
        print(f"Stage 1 (head only) was finished: loaded {head}")
    else:
        compile_model(model, cfg, steps, lr=cfg.learning_rate)
        print(f"Stage 1: {cfg.head_epochs} epochs training the new head only ({trainable:,} "
              f"parameters), backbone frozen, learning rate {cfg.learning_rate:g}")
        validation = [e for e in cfg.validation_epochs() if e < cfg.head_epochs]
        _fit(model, cfg, data, cfg.head_epochs, [*validation, cfg.head_epochs],
             make_callbacks(cfg, augment, backup=HEAD_BACKUP_DIR), progress, workers=workers)
        with atomic_path(head, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
        shutil.rmtree(run_file(cfg.out, HEAD_BACKUP_DIR), ignore_errors=True)
    layers_on, layers_all = unfreeze_top(model, cfg.fine_tune_fraction)
    fine = fine_tune_config(cfg)
    compile_model(model, fine, steps)
    print(f"Stage 2: fine-tuning the top {layers_on} of {layers_all} backbone layers with "
          f"weights (batch-norm frozen) for {fine.epochs} epochs, peak learning rate "
          f"{fine.learning_rate:g}")


def _eval_batch_seconds(cfg: TrainConfig) -> float | None:
    """Seconds of one evaluation batch after training, for the plan's reserve: None (the
    measured validation batch) when training in float32. The evaluation runs the saved float32
    model: with bfloat16 training its passes are priced at their own, float32, speed (priced at
    the bfloat16 validation speed, the reserve let a resnet50 run overrun its budget by
    105 s)."""
    return None if resolve_precision(cfg.precision) == "float32" else float32_batch_seconds(cfg)


PROBE_BATCHES = 8
"""Training batches a time-budget run measures its speed on (:func:`_probe_throughput`):
enough for the 5 timed steps per size of :func:`measure_throughput`. Not the whole training
split, so the speed is known before the training datasets are built: a run that may switch
recipe builds them once, for the recipe chosen (measured on the whole split, a switch left the
first dataset's shuffle buffer, a copy of every photo, allocated while the second was built)."""


def _steps_per_epoch(cfg: TrainConfig, examples: list[Example]) -> int:
    """Optimizer steps in one epoch of one worker: the training photos plus, with ``other``,
    the outliers (:func:`training_outliers`), in batches of ``batch_size``; equal to what
    :func:`make_datasets` returns without a cluster."""
    n = len(select(examples, "train")[0])
    if cfg.other:
        n += cfg.other_synthetic + sum(e.split == "train" for e in load_other_split(
            run_file(cfg.out, OTHER_SPLITS_FILE)))
    return int(np.ceil(n / cfg.batch_size))


def _probe_throughput(cfg: TrainConfig, examples: list[Example], kept: dict[str, np.ndarray],
                      sizes: list[int], image_sizes: list[int]) -> Throughput:
    """:func:`measure_throughput` of ``cfg``'s net, compiled as for training, on
    :data:`PROBE_BATCHES` batches of the first training photos (``kept`` ones not decoded
    again) with ``cfg``'s augmentation, at training sides ``sizes`` and validation sides
    ``image_sizes`` (pixels); the model and the small dataset are dropped afterwards."""
    paths, labels = select(examples, "train")
    n = min(len(paths), PROBE_BATCHES * cfg.batch_size)
    augment = AUGMENTATIONS[cfg.augmentation](seed=cfg.seed)
    probe = make_dataset(paths[:n], _targets(cfg, labels[:n]), cfg.cache_size(), cfg.batch_size,
                         shuffle=True, augment=augment, seed=cfg.seed,
                         images=_stack(kept, paths[:n]))
    model = build_for_training(cfg, PROBE_BATCHES, announce=False)[0]
    return measure_throughput(model, probe, augment, sizes, image_sizes, cfg.batch_size)


def _same_step(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two recipes train the same net in the same batches, so a step at one size
    costs the same in both (the learning rate and the crop's area do not change its cost)."""
    return all(getattr(a, k) == getattr(b, k) for k in ("model", "model_kwargs", "batch_size",
                                                        "precision", "weights"))


def _choose_recipe(cfg: TrainConfig, examples: list[Example], kept: dict[str, np.ndarray],
                   started: float) -> tuple[TrainConfig, Throughput]:
    """Plan the time budget with the run's own recipe; when the plan affords fewer than
    :attr:`TrainConfig.short_budget_epochs` epochs, train with
    :attr:`TrainConfig.short_budget_preset`'s recipe instead
    (:meth:`TrainConfig.short_budget_config`). The speed is measured once, on a few batches
    (:func:`_probe_throughput`), at both recipes' sizes when they train the same net (else the
    other recipe is measured after a switch), so the datasets and model are built once, for
    the recipe chosen. The choice (:attr:`TrainConfig.own_recipe_epochs`,
    :attr:`TrainConfig.budget_recipe`) is saved to ``config.json``; a resumed run keeps it.

    Returns:
        ``(cfg, measured)``: the recipe to train with and its measured speed.
    """
    short = cfg.short_budget_config()
    own_sizes = cfg.train_sizes or [cfg.image_size]
    short_sizes = short.train_sizes or [short.image_size]
    shared = _same_step(cfg, short)
    sizes = sorted(set(own_sizes) | set(short_sizes)) if shared else own_sizes
    print(f"Time budget {cfg.time_budget:g} min: measuring the training speed at "
          f"{', '.join(map(str, sizes))} px to choose the recipe")
    measured = _probe_throughput(cfg, examples, kept, sizes,
                                 sorted({cfg.image_size, short.image_size}) if shared
                                 else [cfg.image_size])
    _measure_eval_batch(cfg, measured)
    steps = _steps_per_epoch(cfg, examples)
    epochs = new_plan(cfg, steps, examples, measured, started).planned_steps / steps
    cfg = dataclasses.replace(cfg, own_recipe_epochs=round(epochs, 2))
    if epochs >= cfg.short_budget_epochs:
        print(f"{epochs:.1f} epochs fit at {' → '.join(map(str, own_sizes))} px: training "
              f"with the {cfg.preset} recipe")
    else:
        print(f"Only {epochs:.1f} epochs fit at {' → '.join(map(str, own_sizes))} px (fewer "
              f"than {cfg.short_budget_epochs:g}): training with the "
              f"{short.budget_recipe} recipe instead")
        cfg = dataclasses.replace(short, own_recipe_epochs=cfg.own_recipe_epochs)
        if not shared:
            measured = _probe_throughput(cfg, examples, kept, short_sizes, [cfg.image_size])
    cfg.save(cfg.out, versions=software_versions())
    return cfg, measured


def _measure_eval_batch(cfg: TrainConfig, measured: Throughput) -> None:
    """Add the evaluation batch of ``cfg`` at its ``image_size`` to ``measured.eval_batch``
    (:func:`_eval_batch_seconds`; nothing for float32 training: the validation batch is it)."""
    key = str(cfg.image_size)
    if key not in measured.eval_batch and (seconds := _eval_batch_seconds(cfg)) is not None:
        measured.eval_batch[key] = seconds


def _follow_budget(cfg: TrainConfig, model: keras.Model, train_ds, augment, steps: int,
                   examples: list[Example], resume: bool, lr, started: float,
                   workers: tuple[tf.distribute.Strategy, Cluster] | None = None,
                   measured: Throughput | None = None) -> FollowBudget:
    """The callback that trains ``model`` to the run's time budget, as :func:`plan_budget`
    plans it (from ``measured`` when given); with ``workers``, measured under the strategy
    (the all-reduce included) and following the chief's plan
    (:class:`catsdogs.distributed.PlanAgreement`)."""
    agree = PlanAgreement(*workers, cfg.train_sizes or [cfg.image_size]) if workers else None
    eval_batch = None if resume or measured is not None else _eval_batch_seconds(cfg)
    with workers[0].scope() if workers else contextlib.nullcontext():
        plan = plan_budget(cfg, model, train_ds, augment, steps, examples, resume, started,
                           agree, eval_batch, measured)
    plan.save(cfg.out)
    spent_before = plan.spent_seconds if resume else 0.0

    def spent() -> float:
        return spent_before + time.perf_counter() - started

    return FollowBudget(plan, lr if isinstance(lr, WarmupCosine) else None,
                        lambda total: warmup_steps(cfg, steps, total),
                        lambda p: p.save(cfg.out), spent, agree)
