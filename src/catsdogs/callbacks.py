"""The Keras callbacks training adds to Keras' own (``BackupAndRestore``, ``TensorBoard``,
``TerminateOnNaN``; https://keras.io/api/callbacks/): an atomic best-weights checkpoint,
``history.csv`` written after every epoch, and progressive resizing."""

from __future__ import annotations

import os
import time

import keras

from catsdogs.config import TrainConfig
from catsdogs.runfolder import read_history, write_history


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
    metrics (``val_*`` cells empty for epochs that were not validated), ``lr``, ``seconds``
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
        write_history(self.path, self.rows)


class ProgressiveResize(keras.callbacks.Callback):
    """Set the augmentation's output size at the start of every epoch from
    :meth:`TrainConfig.train_size` (progressive resizing); a resumed run picks up the size of
    the epoch it resumes at.

    Keras may create the next epoch's data iterator before ``on_epoch_begin``, but a tf.data
    iterator produces nothing (no shuffle fill, map or prefetch) until its first ``get_next``,
    inside the epoch, so every batch of an epoch has that epoch's size (a test checks each
    batch)."""

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
