"""Training: scan → deduplicate → split → tf.data → fit (checkpoints, resume) → test evaluation.

The flow follows the keras-io example "Image classification from scratch"
(https://keras.io/examples/vision/image_classification_from_scratch/); checkpointing and resume
use Keras callbacks (``BackupAndRestore``, ``ModelCheckpoint``,
https://keras.io/api/callbacks/).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from catsdogs import CLASSES
from catsdogs.augment import AUGMENTATIONS
from catsdogs.config import TrainConfig, resolve_precision
from catsdogs.data.pipeline import ResizedPhotos, make_dataset
from catsdogs.data.scan import Photo, ScanResult, scan_folder, summary_lines
from catsdogs.data.split import load_split, make_split, save_split, select
from catsdogs.errors import RunError
from catsdogs.io import atomic_path, atomic_write_text
from catsdogs.models import build_model
from catsdogs.run import MODEL_FILE, is_run_folder

HISTORY_FILE = "history.csv"
TIMINGS_FILE = "timings.json"
BEST_WEIGHTS = os.path.join("checkpoints", "best.weights.h5")
BACKUP_DIR = "backup"


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes to a temporary file and renames it into place, so a crash
    mid-write never leaves a half-written checkpoint, and that saves nothing after an epoch
    without the monitored value (an epoch that was not validated, see
    :attr:`TrainConfig.val_every`), where Keras would warn and save anyway."""

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only and (logs or {}).get(self.monitor) is None:
            return
        super().on_epoch_end(epoch, logs)

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        tmp = final[: -len(".weights.h5")] + ".tmp.weights.h5"
        if os.path.exists(tmp):
            os.unlink(tmp)
        self.filepath = tmp
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = final
        if os.path.exists(tmp):  # written only when the monitored value improved
            os.replace(tmp, final)


class HistoryCSV(keras.callbacks.Callback):
    """Write ``history.csv`` atomically after every epoch: ``epoch`` (1-based), the loss and
    metrics (``val_*`` columns empty for epochs that were not validated), ``lr``, ``seconds``
    (wall time of the epoch, with its validation) and ``elapsed`` (training seconds so far).
    On resume, rows of epochs that will be run again are dropped, so every epoch is counted
    once."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.rows: list[dict] = []
        self._t0 = 0.0

    def on_train_begin(self, logs=None):
        self.rows = read_history(self.path)

    def on_epoch_begin(self, epoch, logs=None):
        self.rows = [r for r in self.rows if int(r["epoch"]) <= epoch]
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        elapsed = (float(self.rows[-1]["elapsed"]) if self.rows else 0.0) + seconds
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()
                                      if k != "learning_rate"},
               "lr": float(keras.ops.convert_to_numpy(lr)), "seconds": round(seconds, 3),
               "elapsed": round(elapsed, 3)}
        self.rows.append(row)
        buf = io.StringIO()
        tail = ["lr", "seconds", "elapsed"]  # a stable column order, val_* or not
        fields = [k for k in dict.fromkeys(k for r in self.rows for k in r) if k not in tail]
        fields += tail
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


class ProgressiveResize(keras.callbacks.Callback):
    """Set the augmentation's output size at the start of every epoch from
    :meth:`TrainConfig.train_size` (progressive resizing); a resumed run picks up the size of
    the epoch it resumes at.

    Keras may create the next epoch's data iterator before ``on_epoch_begin``, but a tf.data
    iterator produces nothing (no shuffle fill, map or prefetch) until its first ``get_next``,
    inside the epoch, so every batch of an epoch has that epoch's size
    (``tests/test_models_pipeline.py`` checks each batch)."""

    def __init__(self, cfg: TrainConfig, augment):
        super().__init__()
        self.cfg, self.augment, self.size = cfg, augment, None

    def on_epoch_begin(self, epoch, logs=None):
        size = self.cfg.train_size(epoch)
        if size != self.size:
            if self.size is not None or size != self.cfg.image_size:
                print(f"Epoch {epoch + 1}: training at {size}×{size} px")
            self.augment.set_output_size(size)
            self.size = size


def read_history(path: str) -> list[dict]:
    """Rows of ``history.csv`` (empty list if the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def validated_rows(history: list[dict]) -> list[dict]:
    """The rows of ``history.csv`` whose epoch was validated (``val_*`` cells not empty; see
    :attr:`TrainConfig.val_every`)."""
    return [r for r in history if r.get("val_loss")]


def _limit(photos: list[Photo], limit: int | None, seed: int) -> list[Photo]:
    if limit is None:
        return photos
    rng = random.Random(seed)
    out = []
    for label in range(len(CLASSES)):
        group = [p for p in photos if p.label == label]
        rng.shuffle(group)
        out += group[:limit]
    return sorted(out, key=lambda p: p.path)


def _stack(kept: dict[str, np.ndarray], paths: list[str]) -> np.ndarray | None:
    """The kept photos of ``paths``, in order, as one ``(n, size, size, 3) uint8`` array; None
    unless every path was kept."""
    if not paths or any(p not in kept for p in paths):
        return None
    return np.stack([kept[p] for p in paths])


def _prepare_run_folder(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    run = cfg.out
    if resume:
        if not is_run_folder(run):
            raise RunError(f"{run}: nothing to resume (no config.json); start it without --resume")
        finished = (os.path.exists(os.path.join(run, MODEL_FILE))
                    and not os.path.exists(os.path.join(run, BACKUP_DIR)))
        if finished and os.path.exists(os.path.join(run, "metrics.json")):
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


def _learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule == "constant":
        return cfg.learning_rate
    if cfg.schedule == "cosine":
        # Linear warm-up then cosine decay to 0 (Loshchilov & Hutter 2017, "SGDR",
        # arXiv:1608.03983; warm-up: Goyal et al. 2017, arXiv:1706.02677).
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        total = cfg.epochs * steps_per_epoch
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg.learning_rate / 10 if warmup else cfg.learning_rate,
            decay_steps=max(1, total - warmup), alpha=0.0,
            warmup_target=cfg.learning_rate if warmup else None, warmup_steps=warmup)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Compile with the configured optimizer, learning-rate schedule and binary cross-entropy."""
    lr = _learning_rate(cfg, steps_per_epoch)
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(lr)
    elif cfg.optimizer == "adamw":  # Loshchilov & Hutter 2019, arXiv:1711.05101
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    model.compile(optimizer=opt,
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
                  jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)


def cache_size(cfg: TrainConfig) -> int:
    """Side, in pixels, at which training holds its photos in memory: the largest training
    size (progressive resizing crops and resizes down from it)."""
    return max(cfg.train_sizes or [cfg.image_size])


def prepare_data(cfg: TrainConfig, run: str, progress: bool
                 ) -> tuple[ScanResult, dict[str, np.ndarray]]:
    """Scan, deduplicate, limit and split the photos; write ``scan.json`` and ``splits.csv``.

    Returns:
        The scan, and every readable photo resized to :func:`cache_size`, by path
        (``(size, size, 3) uint8``), so training need not decode the files again (for the
        full PetImages folder at 96 px, ~0.7 GB of RAM).
    """
    resized = ResizedPhotos(cache_size(cfg))
    result = scan_folder(cfg.data, progress=progress, keep=resized)
    result.write_json(os.path.join(run, "scan.json"))
    for line in summary_lines(result):
        if progress or line.lstrip().startswith("SKIP"):
            print(line)
    result.check_usable()
    photos = _limit(result.deduplicated(), cfg.limit, cfg.seed)
    examples = make_split(photos, cfg.seed,
                          (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction,
                           cfg.test_fraction))
    save_split(examples, os.path.join(run, "splits.csv"))
    return result, resized.finish()


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, evaluate: bool = True) -> str:
    """Train a model into the run folder ``cfg.out`` and evaluate it once on the test split.

    Args:
        cfg: settings (with ``resume``, the run folder's own ``config.json`` is used instead).
        resume: continue an interrupted run from its last completed epoch.
        overwrite: delete an existing run folder first.
        progress: show progress bars (otherwise one line per epoch).
        evaluate: run the test evaluation and write metrics, plots and report at the end.

    Returns:
        The run folder path.

    Raises:
        DataError: the photo folder is unusable.
        RunError: the run folder exists (without ``resume``/``overwrite``) or cannot be resumed.
        ValueError: ``train_sizes`` with an augmentation that cannot resize (``tutorial``), or
            ``val_every`` below 1.
    """
    clock = {"start": time.perf_counter()}
    run = cfg.out
    cfg.validation_epochs()  # a bad val_every fails here, not after the scan (or on resume)
    if cfg.train_sizes and not hasattr(AUGMENTATIONS[cfg.augmentation](), "set_output_size"):
        raise ValueError(f"train_sizes (progressive resizing) needs an augmentation that can "
                         f"change the image size; {cfg.augmentation!r} cannot")
    _prepare_run_folder(cfg, resume, overwrite)
    if resume and os.path.exists(os.path.join(run, MODEL_FILE)) \
            and not os.path.exists(os.path.join(run, BACKUP_DIR)):
        # Training finished but the evaluation did not: evaluate only.
        from catsdogs.evaluate import evaluate_run

        print(f"Resuming {run}: training is complete; evaluating on the test split")
        if evaluate:
            evaluate_run(run, progress=progress)
        return run
    kept: dict[str, np.ndarray] = {}  # path → photo at cache_size(cfg), decoded by the scan
    if resume:
        out = run
        cfg = TrainConfig.load(run)
        cfg.out = out
        examples = load_split(os.path.join(run, "splits.csv"))
        print(f"Resuming {run} (preset {cfg.preset}, {cfg.epochs} epochs)")
    else:
        kept = prepare_data(cfg, run, progress)[1]
        cfg.save(run)
        examples = load_split(os.path.join(run, "splits.csv"))
    clock["data"] = time.perf_counter()

    keras.utils.set_random_seed(cfg.seed)
    train_paths, train_labels = select(examples, "train")
    val_paths, val_labels = select(examples, "val")
    print(f"Split: {len(train_paths)} train, {len(val_paths)} val, "
          f"{len(select(examples, 'test')[0])} test photos → {run}/splits.csv")
    augment = AUGMENTATIONS[cfg.augmentation](seed=cfg.seed)
    # Held at the largest training size; the augmentation resizes each epoch's crops. Photos the
    # scan kept are not decoded again; on resume (no scan) they are decoded in the first epoch.
    size = cache_size(cfg)
    train_ds = make_dataset(train_paths, train_labels, size, cfg.batch_size, shuffle=True,
                            augment=augment, seed=cfg.seed, images=_stack(kept, train_paths))
    val_ds = make_dataset(val_paths, val_labels, cfg.image_size, cfg.batch_size,
                          images=_stack(kept, val_paths) if cfg.image_size == size else None)
    kept.clear()
    steps = int(np.ceil(len(train_paths) / cfg.batch_size))

    # Built under a tf.distribute strategy scope (the default strategy for now) so that
    # multi-worker training can be added by swapping the strategy.
    precision = resolve_precision(cfg.precision)
    trains_at = (f", trained at {' → '.join(map(str, cfg.train_sizes))} px"
                 if cfg.train_sizes else "")
    print(f"Model {cfg.model} at {cfg.image_size} px{trains_at}, {precision} compute, "
          f"{'XLA' if cfg.jit_compile else 'no XLA'}")
    if cfg.val_every > 1:
        print(f"Validating after epochs {', '.join(map(str, cfg.validation_epochs()))}")
    strategy = tf.distribute.get_strategy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        with strategy.scope():
            model = build_model(cfg.model, cfg.image_size, **cfg.model_kwargs)
            compile_model(model, cfg, steps)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    # The pipeline resizes every batch already: the model must not resize training batches
    # of a progressive-resizing stage to image_size.
    model.get_layer("resize").passthrough = True
    history_path = os.path.join(run, HISTORY_FILE)
    checkpoint = AtomicModelCheckpoint(os.path.join(run, BEST_WEIGHTS), monitor="val_loss",
                                       mode="min", save_best_only=True, save_weights_only=True)
    done = read_history(history_path) if resume else []
    if validated := validated_rows(done):
        checkpoint.best = min(float(r["val_loss"]) for r in validated)
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        *([ProgressiveResize(cfg, augment)] if cfg.train_sizes else []),
        HistoryCSV(history_path),
        checkpoint,
        # Last: the backup marks an epoch complete only after history and checkpoint are written.
        # It is kept until model.keras is saved, so a crash in between resumes without retraining.
        keras.callbacks.BackupAndRestore(os.path.join(run, BACKUP_DIR), double_checkpoint=True,
                                         delete_checkpoint=False),
    ]
    clock["setup"] = time.perf_counter()
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
                  validation_freq=cfg.validation_epochs(), shuffle=False,
                  verbose=1 if progress else 2)
    except KeyboardInterrupt:
        raise TrainingInterrupted(run) from None
    clock["fit"] = time.perf_counter()

    model.get_layer("resize").passthrough = False
    best = os.path.join(run, BEST_WEIGHTS)
    if os.path.exists(best):
        model.load_weights(best)
    if precision != "float32":  # the saved model computes in float32: exact and portable
        trained = model
        model = build_model(cfg.model, cfg.image_size, **cfg.model_kwargs)
        model.set_weights(trained.get_weights())
    with atomic_path(os.path.join(run, MODEL_FILE), suffix=".keras") as tmp:
        model.save(tmp)
    shutil.rmtree(os.path.join(run, BACKUP_DIR), ignore_errors=True)
    print(f"Saved {os.path.join(run, MODEL_FILE)} (best epoch by validation loss)")
    clock["save"] = time.perf_counter()
    if evaluate:
        from catsdogs.evaluate import evaluate_run

        evaluate_run(run, model=model, progress=progress)
    clock["evaluate"] = time.perf_counter()
    write_timings(run, clock)
    return run


def write_timings(run: str, clock: dict[str, float]) -> dict[str, float]:
    """Write ``timings.json``: wall seconds of each stage of this ``train`` call, and print them.

    Keys: ``data_seconds`` (scan, deduplicate, split; 0 on resume), ``setup_seconds`` (datasets
    and model), ``fit_seconds`` (all epochs of this call, with validation and checkpoints),
    ``save_seconds`` (``model.keras``), ``evaluate_seconds`` (test split, plots, report) and
    ``total_seconds``. Python and TensorFlow start-up, before ``train`` is called, is not
    included.
    """
    stages = ["start", "data", "setup", "fit", "save", "evaluate"]
    out = {f"{b}_seconds": round(clock[b] - clock[a], 3)
           for a, b in zip(stages, stages[1:], strict=False)}
    out["total_seconds"] = round(clock["evaluate"] - clock["start"], 3)
    atomic_write_text(os.path.join(run, TIMINGS_FILE), json.dumps(out, indent=2))
    print(f"Done in {out['total_seconds']:.0f} s: data {out['data_seconds']:.0f} s, "
          f"training {out['fit_seconds']:.0f} s, evaluation {out['evaluate_seconds']:.0f} s "
          f"→ {run}/{TIMINGS_FILE}")
    return out


class TrainingInterrupted(RunError):
    """Training was stopped by Ctrl-C; the last completed epoch is saved and can be resumed."""

    def __init__(self, run: str):
        super().__init__(f"interrupted; the last completed epoch is saved in {run}/backup. "
                         f"Resume with: catsdogs train --out {run} --resume")
