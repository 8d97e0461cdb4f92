"""Training to a time budget: how many optimizer steps fit in the minutes a user gives.

Budgeted training (Li, Yumer & Ramanan, "Budgeted Training: Rethinking Deep Neural Network
Training Under Resource Constraints", ICLR 2020, arXiv:1905.04753): size the schedule to the
budget and anneal the learning rate to its end value exactly when the budget ends. Here the
schedule's length is a number of optimizer steps, planned from the seconds per step measured
at each training size at the start of the run (:func:`catsdogs.training.measure_throughput`),
and re-planned while training from the measured rate, so the learning rate, the progressive
resizing stages and the final validation all follow the plan as it changes. The budget covers
the whole ``train`` command; a reserve is kept for what comes after the last step (the final
save, the rejection threshold, the test evaluation and the report).

Pure arithmetic, no TensorFlow: the callback that applies the plan is
:class:`catsdogs.callbacks.FollowBudget`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from catsdogs.errors import RunError
from catsdogs.runfolder import PLAN_FILE, read_json, run_file, write_json

RESERVE_FIXED_SECONDS = 20.0
"""Seconds kept after training besides the model passes: loading and saving ``model.keras``,
plots, report (measured runs spend 10–20 s on them)."""


@dataclass
class BudgetPlan:
    """A time-budget plan: measured costs and the number of optimizer steps that fit.

    Attributes:
        budget_seconds: the whole ``train`` command's budget, seconds.
        steps_per_epoch: optimizer steps (batches) in one pass over the training photos.
        sizes: training input sides in pixels, one progressive-resizing stage each, in order.
        step_seconds: measured seconds per optimizer step at each training size (keys: the
            size as a string, for JSON).
        val_seconds: seconds of one validation pass.
        reserve_seconds: seconds kept for after the last step (save, threshold, test
            evaluation, report).
        val_every: validate every this many epochs, and after the last.
        granularity: steps per compiled call (Keras ``steps_per_execution``): training can
            only stop at a multiple of it within an epoch, or at an epoch's end.
        max_steps: the plan never goes beyond this many steps (the ``fit`` epochs cap).
        planned_steps: the first plan, steps.
        total_steps: the current plan, steps.
        steps_done: optimizer steps taken when the plan was last saved.
        speed: measured ÷ calibrated seconds per step, recently (1.0 before training).
        spent_seconds: budget used when the plan was last saved (a resumed run continues
            from it; the time between that save and a crash is not counted).
        calibration_seconds: seconds the throughput measurement took.
        batch_size: photos per step (for photos per second in :meth:`summary`).
    """

    budget_seconds: float
    steps_per_epoch: int
    sizes: list[int]
    step_seconds: dict[str, float]
    val_seconds: float
    reserve_seconds: float
    val_every: int = 1
    granularity: int = 1
    max_steps: int = 0
    planned_steps: int = 0
    total_steps: int = 0
    steps_done: int = 0
    speed: float = 1.0
    spent_seconds: float = 0.0
    calibration_seconds: float = 0.0
    batch_size: int = 0

    def epochs(self, total_steps: int | None = None) -> int:
        """Epochs (the last possibly partial) of a plan of ``total_steps`` (default: the
        current plan)."""
        total = self.total_steps if total_steps is None else total_steps
        return max(1, math.ceil(total / self.steps_per_epoch))

    def size(self, epoch: int, total_steps: int | None = None) -> int:
        """Training side, pixels, of 0-based ``epoch``: the stages split the planned epochs
        evenly, as :meth:`catsdogs.config.TrainConfig.train_size` does for fixed epochs."""
        n = len(self.sizes)
        return int(self.sizes[min(n - 1, epoch * n // self.epochs(total_steps))])

    def validates(self, epoch: int, total_steps: int | None = None) -> bool:
        """Whether 1-based ``epoch`` ends with a validation pass: every :attr:`val_every`
        epochs and after the last planned epoch."""
        return epoch % self.val_every == 0 or epoch == self.epochs(total_steps)

    def seconds_to(self, done_steps: int, total_steps: int) -> float:
        """Predicted seconds from step ``done_steps`` to ``total_steps``: the steps at each
        epoch's size × :attr:`speed`, plus the validation passes of the epochs that end after
        ``done_steps``."""
        spe, train, validations = self.steps_per_epoch, 0.0, 0
        for epoch in range(done_steps // spe, self.epochs(total_steps)):
            steps = min(total_steps, (epoch + 1) * spe) - max(done_steps, epoch * spe)
            train += max(0, steps) * self.step_seconds[str(self.size(epoch, total_steps))]
            validations += self.validates(epoch + 1, total_steps)
        return train * self.speed + validations * self.val_seconds

    def align(self, steps: int) -> int:
        """``steps`` rounded down to a step training can stop at (see :attr:`granularity`)."""
        return steps - (steps % self.steps_per_epoch) % self.granularity

    def replan(self, done_steps: int, spent_seconds: float) -> int:
        """Re-plan: the most steps whose predicted time fits in the budget left.

        Args:
            done_steps: optimizer steps taken so far.
            spent_seconds: budget used so far, seconds.

        Returns:
            The new :attr:`total_steps` (also set): at least the next stop point after
            ``done_steps``, at most :attr:`max_steps`.
        """
        left = self.budget_seconds - spent_seconds - self.reserve_seconds
        low = self._next_stop(done_steps)
        high = max(low, self.align(self.max_steps) if self.max_steps else
                   low + 1000 * self.steps_per_epoch)

        def fits(steps: int) -> bool:
            return self.seconds_to(done_steps, self.align(steps)) <= left

        if not fits(low) or fits(high):
            self.total_steps = low if not fits(low) else high
            return self.total_steps
        while high - low > 1:  # fits(low), not fits(high): bisect the last plan that fits
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        self.total_steps = self.align(low)
        return self.total_steps

    def _next_stop(self, steps: int) -> int:
        """The first step after ``steps`` at which training can stop."""
        aligned = self.align(steps)
        epoch_end = (steps // self.steps_per_epoch + 1) * self.steps_per_epoch
        return min(aligned + self.granularity, epoch_end)

    def summary(self) -> dict:
        """The plan's record for ``timings.json``, ``config.json`` and the report: budget,
        measured throughput per training size, planned and actual steps."""
        return {"budget_seconds": self.budget_seconds,
                "step_seconds": {k: round(v, 5) for k, v in self.step_seconds.items()},
                "photos_per_second": {k: round(self.batch_size / v, 1)
                                      for k, v in self.step_seconds.items()},
                "val_seconds": round(self.val_seconds, 2),
                "reserve_seconds": round(self.reserve_seconds, 1),
                "calibration_seconds": round(self.calibration_seconds, 1),
                "planned_steps": self.planned_steps,
                "planned_epochs": round(self.planned_steps / self.steps_per_epoch, 2),
                "steps": self.steps_done,
                "epochs": round(self.steps_done / self.steps_per_epoch, 2),
                "speed": round(self.speed, 3),
                "seconds_at_last_step": round(self.spent_seconds, 1)}

    def save(self, run: str) -> None:
        """Write ``plan.json`` into the run folder atomically."""
        write_json(run_file(run, PLAN_FILE), dataclasses.asdict(self))

    @classmethod
    def load(cls, run: str) -> BudgetPlan:
        """Read ``plan.json`` from a run folder.

        Raises:
            RunError: missing or unreadable.
        """
        raw = read_json(run_file(run, PLAN_FILE))
        if raw is None:
            raise RunError(f"{run_file(run, PLAN_FILE)}: missing; this time-budget run cannot "
                           f"be resumed with its plan")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise RunError(f"{run_file(run, PLAN_FILE)}: unreadable ({exc})") from None


def reserve_seconds(photos_after: int, photos: int, seconds: float) -> float:
    """Seconds to keep after the last step: ``photos_after`` model passes at a measured
    evaluation rate (``photos`` photos in ``seconds``) plus :data:`RESERVE_FIXED_SECONDS`."""
    return RESERVE_FIXED_SECONDS + photos_after * seconds / max(1, photos)
