"""The Keras callbacks training adds to Keras' own (``BackupAndRestore``, ``TensorBoard``,
``TerminateOnNaN``; https://keras.io/api/callbacks/): an atomic best-weights checkpoint,
``history.csv`` written after every epoch, progressive resizing, following a time-budget plan
(:mod:`catsdogs.budget`), and a progress bar that counts the steps actually run."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable

import keras

from catsdogs.budget import BudgetPlan
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


class StepProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar (``fit(verbose=1)``; one line per epoch with ``verbose=2``) that
    never counts past the epoch's steps.

    With ``steps_per_execution`` > 1 Keras reports each compiled call as if it ran all its
    steps, so an epoch whose steps are not a multiple of it ends its bar at, e.g., 384/374 with
    a negative time left (keras-team/keras#20861). This caps the step count at the epoch's
    steps. Passed in ``fit``'s callbacks, it replaces the progress bar Keras would add."""

    def on_train_batch_end(self, batch, logs=None):
        if self.target is not None:
            batch = min(batch, self.target - 1)  # ``batch`` is 0-based
        super().on_train_batch_end(batch, logs)


class ProgressiveResize(keras.callbacks.Callback):
    """Set the augmentation's output size at the start of every epoch from ``size_of(epoch)``
    (progressive resizing: :meth:`catsdogs.config.TrainConfig.train_size`, or
    :meth:`catsdogs.budget.BudgetPlan.size` for a time-budget run, whose stages move with the
    plan); a resumed run picks up the size of the epoch it resumes at.

    Keras may create the next epoch's data iterator before ``on_epoch_begin``, but a tf.data
    iterator produces nothing (no shuffle fill, map or prefetch) until its first ``get_next``,
    inside the epoch, so every batch of an epoch has that epoch's size (a test checks each
    batch)."""

    def __init__(self, size_of: Callable[[int], int], augment, image_size: int):
        super().__init__()
        self.size_of, self.augment, self.image_size, self.size = size_of, augment, image_size, None

    def on_epoch_begin(self, epoch, logs=None):
        size = self.size_of(epoch)
        if size != self.size:
            if self.size is not None or size != self.image_size:
                print(f"Epoch {epoch + 1}: training at {size}×{size} px")
            self.augment.set_output_size(size)
            self.size = size


class PlannedValidation(list):
    """``fit(validation_freq=…)`` for a time-budget run: Keras validates after 1-based epoch
    ``e`` when ``e in validation_freq`` (a list), so this list answers from the plan as it is
    at that epoch's end (:meth:`catsdogs.budget.BudgetPlan.validates`), and the last planned
    epoch is always validated however the plan moved."""

    def __init__(self, plan: BudgetPlan):
        super().__init__()
        self.plan = plan

    def __contains__(self, epoch) -> bool:
        return self.plan.validates(int(epoch))


class FollowBudget(keras.callbacks.Callback):
    """Train to a time budget: keep the learning-rate schedule's length equal to the plan,
    re-plan from the measured speed after every compiled call and epoch, stop at the planned
    step, and save the plan (``plan.json``) after every epoch.

    Speed: measured ÷ calibrated seconds per step over the last :attr:`WINDOW_SECONDS` of
    training, measured from one compiled call's end to the next, so the time between epochs
    (checkpoints, backup, logs) counts as training time; validation passes are taken out and
    their measured seconds replace the planned ones. The first call of the run (or of a
    resumed run), which traces the train function, is not counted.

    Args:
        plan: the plan (changed in place).
        schedule: the :class:`catsdogs.training.WarmupCosine` to keep in step, or None.
        warmup: ``total_steps → warm-up steps``.
        save: called with the plan after every epoch (writes ``plan.json``).
        spent: seconds of the budget used so far.
        agree: called with the plan after every re-plan; on several workers it replaces the
            plan with the chief's (:class:`catsdogs.distributed.PlanAgreement`), so all
            workers stop at the same step.
    """

    WINDOW_SECONDS = 120.0

    def __init__(self, plan: BudgetPlan, schedule, warmup: Callable[[int], int],
                 save: Callable[[BudgetPlan], None], spent: Callable[[], float],
                 agree: Callable[[BudgetPlan], None] | None = None):
        super().__init__()
        self.plan, self.schedule, self.warmup, self.save, self.spent = (plan, schedule, warmup,
                                                                        save, spent)
        self.agree = agree or (lambda plan: None)
        self.window: collections.deque = collections.deque()
        self._mark: tuple[float, int] | None = None  # (time, steps) at the last call's end
        self._size = plan.sizes[0]
        self._last_batch_end = 0.0
        self._validation = 0.0  # seconds of validation since the last call's end

    def _steps(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _apply(self) -> None:
        if self.schedule is not None:
            total = self.plan.total_steps
            self.schedule.set_length(self.warmup(total), total)

    def on_epoch_begin(self, epoch, logs=None):
        self._size = self.plan.size(epoch)
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        now, steps = time.perf_counter(), self._steps()
        self._last_batch_end = now
        if self._mark is not None:
            seconds = now - self._mark[0] - self._validation
            predicted = (steps - self._mark[1]) * self.plan.step_seconds[str(self._size)]
            self.window.append((now, seconds, predicted))
            while now - self.window[0][0] > self.WINDOW_SECONDS:
                self.window.popleft()
            if (total := sum(w[2] for w in self.window)) > 0:
                self.plan.speed = sum(w[1] for w in self.window) / total
        self._mark, self._validation = (now, steps), 0.0
        if steps >= self.plan.total_steps:
            self.model.stop_training = True
            return
        self.plan.replan(steps, self.spent())
        self.agree(self.plan)
        self._apply()

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            self._validation = time.perf_counter() - self._last_batch_end
            self.plan.val_seconds = self._validation
        plan = self.plan
        plan.spent_seconds, plan.steps_done = self.spent(), self._steps()
        used = f"{plan.spent_seconds / 60:.1f} of {plan.budget_seconds / 60:g} min used"
        if plan.steps_done >= plan.total_steps:
            print(f"Time budget: trained the planned {plan.steps_done} steps, {used}")
        elif not self.model.stop_training:
            plan.replan(plan.steps_done, plan.spent_seconds)
            self.agree(plan)
            self._apply()
            print(f"Time budget: {used}; plan {plan.total_steps} steps "
                  f"({plan.total_steps / plan.steps_per_epoch:.1f} epochs) at "
                  f"{plan.speed:.2f}× the measured time per step")
        self.save(plan)
