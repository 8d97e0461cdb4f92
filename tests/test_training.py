"""Training (catsdogs.training): decode once, progressive resizing, checks before the scan, the
learning-rate schedule, run folders never clobbered, Ctrl-C, crashes and resume (resume through
catsdogs.api.train, which also evaluates)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli, save_photo, train_until_crash

import catsdogs.data.pipeline as pipeline
from catsdogs import api, system, training
from catsdogs.budget import RESERVE_FIXED_SECONDS, BudgetPlan
from catsdogs.config import make_config
from catsdogs.data.split import load_split, select
from catsdogs.errors import ConfigError, DataError, RunError
from catsdogs.models import build_model, load_model
from catsdogs.runfolder import read_history
from catsdogs.training import check_config, compile_model, learning_rate, train


def test_training_reads_the_photos_the_scan_decoded(make_folder, tmp_path, monkeypatch):
    """Training decodes no photo a second time when it trains and validates at one size; with
    a larger validation size (progressive resizing), only the validation photos are decoded,
    each once."""
    decoded = []
    real = pipeline._decode_path
    monkeypatch.setattr(pipeline, "_decode_path", lambda p: decoded.append(p) or real(p))
    data = str(make_folder(cats=12, dogs=12))
    train(make_config("quick", data=data, out=str(tmp_path / "one"), image_size=32, epochs=2,
                      batch_size=8), progress=False)
    assert decoded == []
    run = tmp_path / "two"
    train(make_config("quick", data=data, out=str(run), image_size=40, train_sizes=[24, 32],
                      epochs=2, batch_size=8), progress=False)
    val_paths = select(load_split(f"{run}/splits.csv"), "val")[0]
    assert sorted(decoded) == sorted(os.fsencode(p) for p in val_paths) and val_paths


def test_progressive_resizing_trains_small_and_saves_at_image_size(make_folder, tmp_path,
                                                                   capsys):
    data = make_folder(cats=12, dogs=12)
    cfg = make_config("quick", data=str(data), out=str(tmp_path / "run"), image_size=40,
                      train_sizes=[24, 32], epochs=2, batch_size=8)
    trained = train(cfg, progress=False)
    run = cfg.out
    out = capsys.readouterr().out
    assert "Epoch 1: training at 24×24 px" in out and "Epoch 2: training at 32×32 px" in out
    assert len(read_history(f"{run}/history.csv")) == 2
    model = load_model(f"{run}/model.keras")
    resize = model.get_layer("resize")
    assert (resize.height, resize.width) == (40, 40) and not resize.passthrough
    head = keras.Model(model.input, model.get_layer("rescale").output)
    assert head(np.zeros((1, 24, 24, 3), "float32")).shape == (1, 40, 40, 3)
    x = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3)).astype("float32")
    np.testing.assert_allclose(model(x), trained(x), atol=1e-6)  # the model it returned


def test_a_time_budget_run_follows_its_plan_to_the_end(make_folder, tmp_path):
    """``time_budget``: throughput measured per training size, the plan's steps trained to the
    last one with the learning rate reaching 0 there, the last epoch validated, the whole
    command inside the budget, and the record in plan.json, timings.json, config.json and the
    report. A run that may switch recipe (``short_budget_preset``) but whose plan affords at
    least ``short_budget_epochs`` epochs keeps its own recipe and records those epochs."""
    data = make_folder(cats=16, dogs=16)
    run = tmp_path / "run"
    started = time.perf_counter()
    api.train(data, run, "quick", image_size=32, train_sizes=[24, 32], batch_size=4,
              val_every=3, time_budget=0.75, short_budget_preset="fast",
              short_budget_epochs=0.5, progress=False, started=started)
    seconds = time.perf_counter() - started
    plan = BudgetPlan.load(str(run))
    assert sorted(plan.step_seconds) == ["24", "32"] and plan.planned_steps > 0
    assert plan.steps_done == plan.total_steps  # stopped where the plan ended...
    rows = read_history(str(run / "history.csv"))
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)  # ...with the rate at 0
    assert float(rows[0]["lr"]) > 0 and rows[-1]["val_loss"]  # and the last epoch validated
    assert len(rows) == plan.epochs() == -(-plan.steps_done // plan.steps_per_epoch)
    assert [int(r["epoch"]) for r in rows if r["val_loss"]] == \
        [e for e in range(1, len(rows) + 1) if e % 3 == 0 or e == len(rows)]
    timings = json.loads((run / "timings.json").read_text())
    record = timings["budget"]
    assert record["steps"] == plan.steps_done and record["budget_seconds"] == 45.0
    assert record["left_seconds"] == pytest.approx(45.0 - timings["total_seconds"], abs=1.0)
    assert record["used_seconds"] + record["left_seconds"] == pytest.approx(45.0, abs=0.2)
    assert timings["total_seconds"] <= seconds
    # On time within a margin for a loaded test machine (the benchmark measures the overrun).
    assert seconds <= 45.0 * 1.25, timings
    config = json.loads((run / "config.json").read_text())
    assert config["time_budget"] == 0.75 and config["budget"]["steps"] == plan.steps_done
    assert config["budget_recipe"] == "" and config["own_recipe_epochs"] >= 0.5
    assert (config["image_size"], config["train_sizes"]) == (32, [24, 32])
    report = (run / "report.md").read_text()
    assert "## Time budget" in report and f"trained {plan.steps_done}" in report
    assert "Whole command:" in report


@pytest.mark.parametrize("same_net", [True, False])
def test_a_budget_too_short_for_the_recipe_trains_with_the_short_budget_recipe(
        make_folder, tmp_path, monkeypatch, same_net):
    """When the plan at the run's own sizes affords fewer than ``short_budget_epochs`` epochs,
    the run switches to ``short_budget_preset``'s recipe before its first step: config.json
    (with the epochs the first plan afforded), plan.json, the saved model and the report all
    follow that recipe, and the photos decoded at the first recipe's size are kept. When both
    recipes train the same net the speed is measured once, on a few batches, at both recipes'
    sizes; otherwise the run's own net at its sizes, then the other recipe's net at its own.
    The training datasets are built once, for the recipe trained with."""
    fast = make_config("fast")
    own_net = fast.model_kwargs if same_net else {"blocks": [1, 1, 1, 1], "norm": "batch"}
    made, measured = [], []
    real_datasets, real_measure = training.make_datasets, training.measure_throughput
    monkeypatch.setattr(training, "make_datasets",
                        lambda cfg, *a: made.append(cfg.image_size) or real_datasets(cfg, *a))
    monkeypatch.setattr(training, "measure_throughput",
                        lambda *a, **k: measured.append(a[3]) or real_measure(*a, **k))
    run = tmp_path / "run"
    api.train(make_folder(cats=16, dogs=16), run, "quick", image_size=32, train_sizes=[24, 32],
              batch_size=fast.batch_size if same_net else 4, time_budget=0.75,
              short_budget_preset="fast", model_kwargs=own_net,
              short_budget_epochs=1e6, progress=False)
    assert made == [fast.image_size]
    assert measured == ([sorted({24, 32, *fast.train_sizes})] if same_net
                        else [[24, 32], fast.train_sizes])
    config = json.loads((run / "config.json").read_text())
    assert config["budget_recipe"] == "fast" and config["short_budget_preset"] == ""
    assert 0 < config["own_recipe_epochs"] < 1e6
    assert (config["image_size"], config["train_sizes"], config["learning_rate"],
            config["model_kwargs"], config["batch_size"]) == \
        (fast.image_size, fast.train_sizes, fast.learning_rate, fast.model_kwargs,
         fast.batch_size)
    assert config["cache_pixels"] == 32  # the scan decoded at the first recipe's size
    plan = BudgetPlan.load(str(run))
    assert plan.sizes == fast.train_sizes and sorted(plan.step_seconds, key=int) == \
        [str(s) for s in fast.train_sizes]
    assert plan.steps_done == plan.total_steps > 0
    resize = load_model(f"{run}/model.keras").get_layer("resize")
    assert (resize.height, resize.width) == (fast.image_size, fast.image_size)
    assert f"with the `fast` recipe (only {config['own_recipe_epochs']:.1f} epochs, fewer " \
        f"than 1e+06," in (run / "report.md").read_text()


def test_bfloat16_training_keeps_time_for_a_float32_evaluation(make_folder, tmp_path,
                                                                monkeypatch):
    """The evaluation after training runs the saved float32 model, so a bfloat16 run prices
    its passes at the float32 speed (measured on a float32 copy of the model), not at the
    bfloat16 validation speed. The training speed is measured on a few batches before the
    training datasets are built (their shuffle buffer is not filling meanwhile)."""
    calls, real = [], training.float32_batch_seconds
    order, real_datasets, real_measure = [], training.make_datasets, training.measure_throughput
    monkeypatch.setattr(training, "make_datasets",
                        lambda *a: order.append("datasets") or real_datasets(*a))
    monkeypatch.setattr(training, "measure_throughput",
                        lambda *a, **k: order.append("measure") or real_measure(*a, **k))

    def float32_batch(cfg):
        calls.append(keras.mixed_precision.global_policy().name)
        assert real(cfg) > 0  # the real measurement runs
        calls.append(keras.mixed_precision.global_policy().name)
        return 0.5

    monkeypatch.setattr(training, "float32_batch_seconds", float32_batch)
    run = tmp_path / "run"
    api.train(make_folder(cats=16, dogs=16), run, "quick", image_size=32, batch_size=4,
              time_budget=0.5, precision="mixed_bfloat16", progress=False)
    assert calls == ["float32", "float32"]  # measured once, in float32
    assert order == ["measure", "datasets"]
    cfg = training.TrainConfig.load(str(run))
    examples = load_split(f"{run}/splits.csv")
    photos_after = training._photos_after_training(cfg, examples)
    plan = BudgetPlan.load(str(run))
    assert plan.reserve_seconds == pytest.approx(RESERVE_FIXED_SECONDS + photos_after * 0.5 / 4)


def test_epochs_turn_the_budget_off_and_the_schedule_keeps_its_numbers():
    assert make_config("default").time_budget == 30 and make_config("fast").time_budget == 5
    assert make_config("default", epochs=3).time_budget is None
    assert make_config("default", epochs=3, time_budget=2).time_budget == 2
    assert make_config("default", time_budget=0).time_budget is None
    with pytest.raises(ConfigError, match="time_budget must be positive"):
        make_config("default", time_budget=-1)
    # A budget run's warm-up is at most a tenth of its steps; a fixed run's is as configured.
    budget = make_config("default", warmup_epochs=1.0)
    assert training.warmup_steps(budget, 100, 500) == 50
    assert training.warmup_steps(make_config("default", epochs=5), 100, 500) == 100
    schedule = training.WarmupCosine(0.01, 20, 200)
    schedule.set_length(0, 100)  # re-planned: no warm-up, half as long
    assert float(schedule(50)) == pytest.approx(0.005, rel=1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_progressive_resizing_needs_a_resizing_augmentation(make_folder, tmp_path):
    cfg = make_config("baseline", data=str(make_folder()), out=str(tmp_path / "run"),
                      train_sizes=[32, 64], epochs=2)
    with pytest.raises(ConfigError, match="progressive resizing"):
        train(cfg, progress=False)


def test_settings_that_cannot_train_fail_before_the_scan(tmp_path):
    missing = str(tmp_path / "no-photos-here")  # never scanned: the checks come first
    for bad, error, match in ((dict(model="vgg"), ConfigError, "unknown model"),
                              (dict(augmentation="wild"), ConfigError, "unknown augmentation"),
                              (dict(val_every=0), ConfigError, "val_every"),
                              (dict(other=missing), DataError, "no such folder of other")):
        cfg = make_config("quick", data=missing, out=str(tmp_path / "run"), **bad)
        with pytest.raises(error, match=match):
            check_config(cfg)
        with pytest.raises(error, match=match):
            train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_learning_rate_schedules():
    cfg = make_config("default", learning_rate=0.01, epochs=10, warmup_epochs=1.0)
    schedule = learning_rate(cfg, steps_per_epoch=20)
    assert float(schedule(0)) == pytest.approx(0.001)  # warm-up starts at a tenth
    assert float(schedule(20)) == pytest.approx(0.01)  # the peak after one epoch
    assert float(schedule(110)) == pytest.approx(0.005, rel=1e-3)  # half-way down the cosine
    assert float(schedule(200)) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(make_config("baseline"), 20) == 1e-3  # constant
    with pytest.raises(ConfigError, match="unknown schedule"):
        learning_rate(make_config("default", schedule="steps"), 20)
    model = build_model("baseline", 32)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        compile_model(model, make_config("default", optimizer="sgd"), 20)


def test_a_traced_step_builds_the_schedule_once_and_trains_as_eagerly():
    # AdamW reads the learning rate once per weight for its weight decay; the traced step must
    # hold one copy of the schedule (one Cos op), and train exactly as eager execution does.
    schedule = training.WarmupCosine(0.01, 3, 12)
    step = keras.Variable(5, dtype="int64", trainable=False)
    graph = tf.function(lambda: [schedule(step) for _ in range(4)]).get_concrete_function().graph
    assert [op.type for op in graph.get_operations()].count("Cos") == 1
    x = np.random.default_rng(0).normal(size=(96, 4, 4, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("float32")[:, None]
    weights = []
    for eager in (False, True):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(4, 3),
                                  keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile(keras.optimizers.AdamW(training.WarmupCosine(0.01, 3, 12),
                                             weight_decay=0.5),
                      "binary_crossentropy", run_eagerly=eager, steps_per_execution=4)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations) == 12
        weights.append(model.get_weights())
    for traced, eager in zip(*weights, strict=True):
        np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-6)


def test_existing_folder_is_never_overwritten(make_folder, tmp_path):
    data = make_folder(cats=6, dogs=6)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    proc = run_cli("train", "--data", data, "--out", out, "--preset", "quick", check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "thesis.txt").read_text() == "years of work"
    proc = run_cli("train", "--out", out, "--resume", check=False)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    data = tmp_path / "photos"
    for label, name in ((0, "cats"), (1, "dogs")):
        for i in range(60):
            save_photo(data / name / f"{i}.png", label, seed=i)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "catsdogs.cli", "train", "--data", str(data), "--out", str(run),
           "--preset", "quick", "--image-size", "32", "--batch-size", "8", "--epochs", "200",
           "--no-progress"]
    # Ctrl-C must reach the child even when this test runs in a background job, which starts
    # with SIGINT ignored (POSIX) and then Python installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    history = run / "history.csv"
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    assert (run / "backup").is_dir()  # resumable state is on disk
    assert [n for n in os.listdir(run) if ".tmp" in n] == []


def test_crash_after_training_before_saving_resumes_without_retraining(make_folder, tmp_path,
                                                                       monkeypatch):
    data = make_folder(cats=12, dogs=12)
    cfg = make_config("quick", data=str(data), out=str(tmp_path / "run"), image_size=32,
                      epochs=2, batch_size=8)

    def crash(*args, **kwargs):
        raise OSError("disk full while saving model.keras")

    with monkeypatch.context() as m:
        m.setattr(training, "atomic_path", crash)
        with pytest.raises(OSError, match="disk full"):
            train(cfg, progress=False)
    run = tmp_path / "run"
    assert not (run / "model.keras").exists() and (run / "backup").is_dir()
    history_before = (run / "history.csv").read_text()
    api.train(out=run, resume=True, progress=False)  # trains nothing, saves, evaluates
    assert (run / "history.csv").read_text() == history_before  # no epoch was run again
    assert (run / "model.keras").exists() and (run / "metrics.json").exists()
    assert not (run / "backup").exists()
    with pytest.raises(RunError, match="already complete"):
        api.train(out=run, resume=True, progress=False)


def test_resuming_a_run_whose_training_finished_only_evaluates_it(make_folder, tmp_path):
    """training.train trains only; when it finished but the evaluation did not happen (a crash
    in between), resume trains nothing and catsdogs.api.train evaluates the saved model."""
    run = tmp_path / "run"
    train(make_config("quick", data=str(make_folder(cats=12, dogs=12)), out=str(run),
                      image_size=32, epochs=1, batch_size=8), progress=False)
    assert (run / "model.keras").exists() and not (run / "metrics.json").exists()
    model_before = (run / "model.keras").read_bytes()
    assert train(make_config("quick", out=str(run)), resume=True, progress=False) is None
    finished = api.train(out=run, resume=True, progress=False)
    assert (run / "model.keras").read_bytes() == model_before  # not trained again
    assert finished.metrics["n"] > 0 and (run / "report.md").exists()
    assert finished.config.inference.ood_threshold is not None  # the rejection is calibrated


@pytest.mark.timed_precision
def test_auto_precision_is_timed_once_saved_and_kept_on_resume(make_folder, tmp_path,
                                                               monkeypatch, capsys):
    """On a CPU with native bfloat16, a new run times a real training step in both precisions
    and trains in the faster; config.json records the choice, and a resumed run keeps it
    without timing again. The timing's result is replaced so the test does not depend on the
    CPU: float32 wins, against the flags' guess (bfloat16), as on an Intel Xeon without AMX."""
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: True)
    timed, built = [], []
    real_step, real_build = training.step_seconds, training.build_for_training

    def step(cfg, precision, size):
        assert real_step(cfg, precision, size, steps=1) > 0  # the real step runs
        timed.append((precision, size))
        return {"float32": 0.1, "mixed_bfloat16": 0.2}[precision]

    def build(*args, **kwargs):
        model, precision = real_build(*args, **kwargs)
        built.append(precision)
        return model, precision

    monkeypatch.setattr(training, "step_seconds", step)
    monkeypatch.setattr(training, "build_for_training", build)
    run = tmp_path / "run"
    cfg = make_config("quick", data=str(make_folder(cats=12, dogs=12)), out=str(run),
                      image_size=40, train_sizes=[24, 32, 40], epochs=3, batch_size=8)
    assert cfg.precision == "auto"
    train_until_crash(train, cfg, 2, monkeypatch)
    assert sorted(timed) == [("float32", 24), ("mixed_bfloat16", 24)]  # the smallest size
    assert built == ["float32", "mixed_bfloat16", "float32"]  # timed twice, trained
    assert "Precision: float32 (auto: timed photos/s at 24 px: float32 80, " \
           "mixed_bfloat16 40" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert saved["precision"] == "float32"
    assert saved["precision_choice"]["step_seconds"] == {"float32": 0.1, "mixed_bfloat16": 0.2}
    timed.clear(), built.clear()
    api.train(out=run, resume=True, progress=False)
    assert timed == [] and built == ["float32"]
    assert "Precision: float32 (as when the run started: auto: timed" in \
        capsys.readouterr().out
    assert [int(r["epoch"]) for r in read_history(str(run / "history.csv"))] == [1, 2, 3]
    assert "float32 compute (auto: timed photos/s at 24 px" in \
        (run / "report.md").read_text()
    again = tmp_path / "again"  # a new run of the same net here: the cached timings
    again.mkdir()
    choice = training.record_precision(dataclasses.replace(cfg, out=str(again)))
    assert timed == [] and choice.precision == "float32"
    assert choice.precision_choice["cached"] and "cached in" in choice.precision_choice["reason"]


def test_validating_every_other_epoch_survives_a_crash_and_resumes(make_folder, tmp_path,
                                                                   monkeypatch):
    data = make_folder(cats=12, dogs=12)
    cfg = make_config("quick", data=str(data), out=str(tmp_path / "run"), image_size=32,
                      epochs=5, batch_size=8, val_every=2)
    run = tmp_path / "run"
    train_until_crash(train, cfg, 3, monkeypatch)
    api.train(out=run, resume=True, progress=False)
    rows = read_history(str(run / "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [int(r["epoch"]) for r in rows if r["val_loss"]] == [2, 4, 5]
    assert list(rows[0])[:5] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    report = (run / "report.md").read_text()
    assert "Trained 5 epochs" in report and "validated after 3 of them" in report
    assert (run / "model.keras").exists() and (run / "plots" / "history.png").exists()
