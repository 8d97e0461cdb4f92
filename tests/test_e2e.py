"""End to end on real photos from ../shared/data: train → complete run folder → evaluate →
predict, and a training process killed with SIGKILL, then resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import require_shared, run_cli
from scipy.stats import binomtest

pytestmark = pytest.mark.e2e

LIMIT = 300  # photos per class used for training (80/10/10 split)
EPOCHS = 10


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    pets = require_shared("PetImages")
    run = tmp_path_factory.mktemp("e2e") / "run"
    proc = run_cli("train", "--data", pets, "--out", run, "--preset", "quick", "--limit", LIMIT,
                   "--batch-size", "32", "--epochs", str(EPOCHS), "--no-progress")
    return pets, run, proc


def test_train_writes_a_complete_run_folder(real_run):
    pets, run, proc = real_run
    for name in ("model.keras", "config.json", "splits.csv", "history.csv", "metrics.json",
                 "report.md", "scan.json", "predictions.csv"):
        assert (run / name).stat().st_size > 0, name
    for name in ("history.png", "confusion_matrix.png", "roc.png", "samples.png",
                 "mistakes.png"):
        assert (run / "plots" / name).stat().st_size > 5000, name
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "quick" and config["limit"] == LIMIT
    assert {"tensorflow", "keras", "catsdogs"} <= set(config["versions"])
    with open(run / "splits.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * LIMIT
    assert sum(r["split"] == "test" for r in rows) == 2 * LIMIT // 10
    assert len({r["path"] for r in rows}) == len(rows)
    history = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in history] == list(range(1, EPOCHS + 1))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["source"]["split"] == "test" and metrics["n"] == 2 * LIMIT // 10
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"]
    report = (run / "report.md").read_text()
    assert "plots/confusion_matrix.png" in report and "accuracy" in report
    # The cross-class duplicate (Cat/8456.jpg = Dog/8736.jpg) can never be in a split.
    assert not any(r["path"].endswith(("Cat/8456.jpg", "Dog/8736.jpg")) for r in rows)
    timings = json.loads((run / "timings.json").read_text())
    stages = [timings[f"{s}_seconds"] for s in ("data", "setup", "fit", "save", "evaluate")]
    assert min(stages) >= 0 and abs(sum(stages) - timings["total_seconds"]) < 0.01
    # every epoch's own seconds happen inside the fit stage
    assert sum(float(r["seconds"]) for r in history) <= timings["fit_seconds"]
    assert f"→ {run}/timings.json" in proc.stdout


def test_model_beats_chance_on_held_out_photos(real_run, tmp_path):
    """Evaluate on 600 real photos the run never saw (not in any of its splits)."""
    pets, run, _ = real_run
    used = {r["path"] for r in csv.DictReader(open(run / "splits.csv"))}
    held = tmp_path / "held"
    for cls in ("Cat", "Dog"):
        (held / cls).mkdir(parents=True)
        names = sorted(os.listdir(pets / cls), key=lambda n: int(n.split(".")[0]))
        fresh = [n for n in names if str(pets / cls / n) not in used][-300:]
        for n in fresh:
            os.symlink(pets / cls / n, held / cls / n)
    proc = run_cli("evaluate", run, "--data", held, "--no-progress")
    metrics = json.loads((run / "eval-held" / "metrics.json").read_text())
    assert metrics["n"] == 600, proc.stdout[-2000:]
    correct = round(metrics["accuracy"] * metrics["n"])
    # One-sided binomial test against a coin flip: chance alone reaches this with p < 1e-4.
    assert binomtest(correct, metrics["n"], 0.5, alternative="greater").pvalue < 1e-4, metrics
    assert metrics["roc_auc"] > 0.6, metrics


def test_evaluate_recomputes_test_metrics(real_run):
    _, run, _ = real_run
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    run_cli("evaluate", run, "--no-progress")
    after = json.loads((run / "metrics.json").read_text())
    assert after["n"] == before["n"]
    assert after["accuracy"] == pytest.approx(before["accuracy"], abs=1e-9)


def test_predict_on_sample_photos(real_run):
    _, run, _ = real_run
    samples = require_shared("samples")
    proc = run_cli("predict", run, samples, "--json")
    rows = json.loads(proc.stdout)
    assert len(rows) == len([n for n in os.listdir(samples) if n.endswith(".jpg")]) >= 10
    assert all(r["error"] is None and 0 <= r["p_dog"] <= 1 for r in rows)


def _wait_for(predicate, timeout, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _train_then_kill(cmd: list[str], history, epochs: int) -> str:
    """Start ``catsdogs train`` (``cmd``), SIGKILL it once ``history`` has ``epochs`` rows;
    return its output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)

    def epochs_done():
        return history.exists() and len(history.read_text().strip().splitlines()) - 1 >= epochs

    try:
        assert _wait_for(epochs_done, 600, proc), proc.communicate()[0][-3000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate()[0].decode()
    return output


def test_kill_minus_nine_then_resume(tmp_path):
    real = require_shared("PetImages")
    pets = tmp_path / "pets"  # 150 real photos per class, linked (scanning all 25k is slow)
    for cls in ("Cat", "Dog"):
        (pets / cls).mkdir(parents=True)
        for n in sorted(os.listdir(real / cls))[:150]:
            os.symlink(real / cls / n, pets / cls / n)
    run = tmp_path / "run"
    epochs = 30  # small batches and many epochs: the kill lands mid-run, not after the end
    cmd = [sys.executable, "-m", "catsdogs.cli", "train", "--data", str(pets), "--out", str(run),
           "--preset", "quick", "--limit", "60", "--epochs", str(epochs), "--batch-size", "4",
           "--no-progress"]
    history = run / "history.csv"
    _train_then_kill(cmd, history, 2)
    assert not (run / "model.keras").exists()
    done_before = len(history.read_text().strip().splitlines()) - 1
    assert 2 <= done_before < epochs
    splits_before = (run / "splits.csv").read_bytes()
    # A killed run is not silently overwritten by a fresh start...
    fresh = run_cli("train", "--data", pets, "--out", run, check=False)
    assert fresh.returncode == 2 and "--resume" in fresh.stderr
    # ...and --resume finishes it.
    proc = run_cli("train", "--out", run, "--resume", "--no-progress")
    assert "Resuming" in proc.stdout
    rows = list(csv.DictReader(open(history)))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))  # each epoch once
    assert (run / "splits.csv").read_bytes() == splits_before
    assert (run / "model.keras").exists() and (run / "metrics.json").exists()
    assert not (run / "backup").exists()  # BackupAndRestore cleans up after a finished run
    leftovers = [n for n in os.listdir(run) if ".tmp" in n]
    assert leftovers == []


def test_kill_minus_nine_mid_budget_then_resume_continues_the_same_plan(make_folder, tmp_path):
    """A --time-budget run killed with SIGKILL resumes its saved plan (no new throughput
    measurement, the same measured rates and first plan) and still ends where the plan ends,
    the learning rate at 0 on the last step."""
    data = make_folder(cats=24, dogs=24)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "catsdogs.cli", "train", "--data", str(data), "--out", str(run),
           "--preset", "quick", "--image-size", "32", "--train-sizes", "24,32",
           "--batch-size", "4", "--time-budget", "1", "--no-progress",
           "--set", "precision=float32"]  # untimed: the whole 1-minute budget for the plan
    history = run / "history.csv"
    output = _train_then_kill(cmd, history, 3)
    assert "measured photos/s" in output and not (run / "model.keras").exists()
    before = json.loads((run / "plan.json").read_text())
    done_before = len(history.read_text().strip().splitlines()) - 1
    assert 0 < before["steps_done"] < before["total_steps"], before
    resumed = run_cli("train", "--out", run, "--resume", "--no-progress")
    assert "Resuming the time-budget plan" in resumed.stdout
    assert "measured photos/s" not in resumed.stdout  # not measured again
    after = json.loads((run / "plan.json").read_text())
    for key in ("budget_seconds", "step_seconds", "planned_steps", "steps_per_epoch", "sizes"):
        assert after[key] == before[key], key
    assert after["steps_done"] == after["total_steps"] > before["steps_done"]
    rows = list(csv.DictReader(open(history)))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)) and \
        len(rows) > done_before  # every epoch once, more after the resume
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-9) and rows[-1]["val_loss"]
    assert (run / "model.keras").exists() and (run / "metrics.json").exists()
