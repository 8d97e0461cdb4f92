"""The time-budget planner (catsdogs.budget): how many steps fit, where training can stop, how
the stages and the last validation follow the plan, and plan.json."""

from __future__ import annotations

import pytest

from catsdogs.budget import RESERVE_FIXED_SECONDS, BudgetPlan, reserve_seconds
from catsdogs.errors import RunError


def _plan(**kw) -> BudgetPlan:
    """10 steps an epoch at 0.1/0.2 s a step (two stages), 1 s validation every other epoch."""
    values = dict(budget_seconds=100.0, steps_per_epoch=10, sizes=[32, 64],
                  step_seconds={"32": 0.1, "64": 0.2}, val_seconds=1.0, reserve_seconds=10.0,
                  val_every=2, granularity=1, batch_size=8)
    return BudgetPlan(**{**values, **kw})


def test_seconds_to_counts_each_stage_and_the_validations():
    plan = _plan()
    # 40 steps = 4 epochs: 2 at 32 px (20 × 0.1) and 2 at 64 px (20 × 0.2); validations after
    # epochs 2 and 4.
    assert plan.seconds_to(0, 40) == pytest.approx(2.0 + 4.0 + 2 * 1.0)
    # 35 steps = 3.5 epochs: epochs 0-1 at 32 px (stage boundary at epoch 4 × 1 // 2 = 2)...
    assert [plan.size(e, 35) for e in range(4)] == [32, 32, 64, 64]
    assert plan.seconds_to(0, 35) == pytest.approx(2.0 + 15 * 0.2 + 2 * 1.0)  # val 2 and 4
    # ...and from step 25 on, only what is left.
    assert plan.seconds_to(25, 40) == pytest.approx(15 * 0.2 + 1.0)
    plan.speed = 2.0  # training twice as slow as measured; validation as measured
    assert plan.seconds_to(25, 40) == pytest.approx(2 * 15 * 0.2 + 1.0)


def test_replan_takes_the_most_steps_that_fit_the_budget_left():
    plan = _plan()
    total = plan.replan(0, spent_seconds=20.0)  # 100 − 20 − 10 reserve = 70 s to train in
    assert plan.total_steps == total
    assert plan.seconds_to(0, total) <= 70.0 < plan.seconds_to(0, total + 1)
    slower = _plan(speed=2.0)
    assert slower.replan(0, 20.0) < total  # a slower machine plans fewer steps
    assert _plan().replan(0, 50.0) < total  # a later start too


def test_replan_stops_only_where_training_can_stop():
    """With 4 steps per compiled call, training stops at 4, 8, … within an epoch or at its end
    (10 steps): the plan is always one of those, and never before the next one."""
    plan = _plan(granularity=4)
    stops = {e * 10 + k for e in range(100) for k in (0, 4, 8)}
    for spent in (0.0, 13.3, 47.1, 71.0):
        assert plan.replan(0, spent) in stops
    assert plan.replan(12, spent_seconds=1000.0) == 14  # out of time: the next stop point
    assert plan.replan(18, spent_seconds=1000.0) == 20  # the epoch's end comes first


def test_replan_respects_the_cap():
    plan = _plan(max_steps=30)
    assert plan.replan(0, 0.0) == 30


def test_the_last_planned_epoch_is_always_validated():
    plan = _plan()
    plan.total_steps = 35  # 4 epochs, the last one half
    assert [e for e in range(1, 5) if plan.validates(e)] == [2, 4]
    plan.total_steps = 45  # 5 epochs: every other one and the fifth
    assert [e for e in range(1, 6) if plan.validates(e)] == [2, 4, 5]


def test_plan_json_round_trip(tmp_path):
    plan = _plan(planned_steps=40, total_steps=38, steps_done=20, spent_seconds=33.5)
    plan.save(str(tmp_path))
    assert BudgetPlan.load(str(tmp_path)) == plan
    assert plan.summary()["photos_per_second"] == {"32": 80.0, "64": 40.0}
    with pytest.raises(RunError, match="plan.json: missing"):
        BudgetPlan.load(str(tmp_path / "nowhere"))
    (tmp_path / "plan.json").write_text('{"budget_seconds": 1}')
    with pytest.raises(RunError, match="unreadable"):
        BudgetPlan.load(str(tmp_path))


def test_reserve_counts_the_model_passes_after_training():
    assert reserve_seconds(0, 100, 5.0) == RESERVE_FIXED_SECONDS
    assert reserve_seconds(400, 100, 5.0) == pytest.approx(RESERVE_FIXED_SECONDS + 20.0)
