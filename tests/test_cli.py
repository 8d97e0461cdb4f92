"""The command line: every command's help, output formats and exit codes, one-line errors, the
train options and --set as they reach catsdogs.api.train, and the per-call inference options
of predict."""

from __future__ import annotations

import csv
import io
import json
import os
import time

import pytest
from conftest import photo, run_cli, save_every_format, save_photo
from PIL import Image

import catsdogs.api
from catsdogs.cli import main
from catsdogs.config import PRESETS, TrainConfig, make_config


def test_cli_predict_text_json_csv_and_exit_codes(tiny_run, tmp_path):
    folder = save_every_format(tmp_path / "in")
    proc = run_cli("predict", tiny_run, folder, check=False)
    assert proc.returncode == 1  # two files failed
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 10
    assert any("z-broken.jpg\tERROR\tnot an image" in line for line in lines)
    assert "2 of 10 files could not be classified" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_cli("predict", tiny_run, folder / "a.jpg", folder / "b.png", "--json")
    rows = json.loads(proc.stdout)
    assert [os.path.basename(r["path"]) for r in rows] == ["a.jpg", "b.png"]
    assert all(abs(r["p_dog"] + r["p_cat"] - 1) < 1e-9 for r in rows)

    out = tmp_path / "out.csv"
    proc = run_cli("predict", tiny_run, folder / "a.jpg", "--csv", out)
    (row,) = list(csv.DictReader(io.StringIO(out.read_text())))
    assert row["label"] in ("cat", "dog") and row["error"] == ""
    assert f"{float(row['p_dog']):.4f}" in proc.stdout


def test_cli_errors_are_one_line(tiny_run, tmp_path):
    proc = run_cli("predict", tmp_path / "no-run", "x.jpg", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    proc = run_cli("data", "check", tmp_path / "missing", check=False)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    (tmp_path / "onlycats" / "cats").mkdir(parents=True)
    Image.fromarray(photo(0)).save(tmp_path / "onlycats" / "cats" / "1.jpg")
    proc = run_cli("data", "check", tmp_path / "onlycats", check=False)
    assert proc.returncode == 1 and "only one class" in proc.stderr


@pytest.mark.parametrize("command", ["", "data", "data check", "data download", "train",
                                     "models", "evaluate", "predict", "serve", "explain", "export"])
def test_every_command_has_help(command):
    proc = run_cli(*command.split(), "--help")
    assert "usage: catsdogs" in proc.stdout and "--help" in proc.stdout


def test_data_check_json_report(make_folder, tmp_path):
    root = make_folder(cats=3, dogs=3)
    (root / "Cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    report = tmp_path / "report.json"
    proc = run_cli("data", "check", root, "--report", report, "--no-progress")
    assert "SKIP" in proc.stdout and "bad.jpg" in proc.stdout
    data = json.loads(report.read_text())
    assert data["counts"] == {"cat": 3, "dog": 3} and data["n_skipped"] == 1
    assert data["skipped"][0]["path"].endswith("bad.jpg")


@pytest.fixture
def train_calls(monkeypatch, tmp_path):
    """``catsdogs train`` with catsdogs.api.train replaced: returns ``(base_args, calls)``, each
    call ``(data, out, preset, options, settings)``."""
    calls = []

    def fake_train(data, out, preset, *, resume, overwrite, progress, started, workers,
                   worker_index, **settings):
        assert started <= time.perf_counter()  # the time budget counts from the command's start
        cluster = dict(workers=workers, worker_index=worker_index) if workers else {}
        calls.append((data, out, preset, dict(resume=resume, overwrite=overwrite,
                                              progress=progress, **cluster), settings))

    monkeypatch.setattr(catsdogs.api, "train", fake_train)
    return ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")], calls


def test_train_passes_its_arguments_to_the_api(train_calls, tmp_path):
    base, calls = train_calls
    assert main(base) == 0
    assert calls == [(str(tmp_path), str(tmp_path / "run"), "default",
                      dict(resume=False, overwrite=False, progress=True), {})]
    assert main(["train", "--out", "r", "--resume", "--no-progress", "--preset", "fast"]) == 0
    assert calls[-1] == (None, "r", "fast", dict(resume=True, overwrite=False, progress=False),
                         {})
    assert main([*base, "--workers", "a:1,b:2", "--worker-index", "1"]) == 0
    assert calls[-1][3] == dict(resume=False, overwrite=False, progress=True, workers="a:1,b:2",
                                worker_index=1)


def test_train_needs_data_unless_resuming(train_calls, capsys):
    _, calls = train_calls
    assert main(["train", "--out", "r"]) == 2 and calls == []
    assert "error: --data DIR is required" in capsys.readouterr().err


@pytest.mark.parametrize("flag, good, settings, bad, message", [
    ("--train-sizes", "24,32", {"train_sizes": [24, 32]}, "big",
     "expected pixel sizes like 96,112"),
    ("--val-every", "3", {"val_every": 3}, "0", "must be at least 1"),
    ("--epochs", "4", {"epochs": 4}, "-1", "must be at least 1"),
    ("--limit", "50", {"limit": 50}, "x", "expected a whole number"),
    ("--time-budget", "7.5", {"time_budget": 7.5}, "-3", "must be positive minutes"),
    ("--time-budget", "none", {"time_budget": 0.0}, "soon", "expected minutes"),
    ("--cache-memory-gb", "1.5", {"cache_memory_gb": 1.5}, "lots", "invalid float value"),
])
def test_per_setting_train_flags(train_calls, capsys, flag, good, settings, bad, message):
    """One test for every flag derived from a TrainConfig field (this replaces two copies of
    the same option test, one for --train-sizes and one for --val-every)."""
    base, calls = train_calls
    assert main([*base, flag, good]) == 0
    assert calls[-1][4] == settings
    with pytest.raises(SystemExit) as exit_info:
        main([*base, flag, bad])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_image_size_alone_also_trains_at_that_size(train_calls):
    base, calls = train_calls
    assert main([*base, "--image-size", "128"]) == 0  # alone: train at that size too
    assert main([*base, "--image-size", "128", "--train-sizes", "none"]) == 0
    assert main([*base, "--image-size", "128", "--train-sizes", "32,40"]) == 0
    assert main([*base, "--train-sizes", "24,32"]) == 0
    assert main(base) == 0
    assert [c[4] for c in calls] == [{"image_size": 128, "train_sizes": []},
                                     {"image_size": 128, "train_sizes": []},
                                     {"image_size": 128, "train_sizes": [32, 40]},
                                     {"train_sizes": [24, 32]}, {}]
    configs = [make_config(c[2], **c[4]) for c in calls]
    default = TrainConfig()  # without options, the preset's own sizes
    assert [(c.image_size, c.train_sizes) for c in configs] == \
        [(128, []), (128, []), (128, [32, 40]), (default.image_size, [24, 32]),
         (default.image_size, default.train_sizes)]
    assert [c.val_every for c in configs] == [default.val_every] * 5


def test_set_reaches_the_api_as_typed_settings(train_calls):
    base, calls = train_calls
    assert main([*base, "--preset", "quick", "--set", "learning_rate=0.003", "--set",
                 "tta=false", "--set", "inference.threshold=0.6", "--set",
                 "model_kwargs={\"blocks\": [1, 1]}", "--epochs", "3", "--set",
                 "epochs=7"]) == 0
    data, out, preset, _, settings = calls[-1]
    assert preset == "quick"
    assert settings == {"learning_rate": 0.003, "tta": False, "threshold": 0.6,
                        "model_kwargs": {"blocks": [1, 1]}, "epochs": 7}  # --set wins
    cfg = make_config(preset, **settings)
    assert cfg.learning_rate == 0.003 and cfg.epochs == 7
    assert cfg.inference.tta is False and cfg.inference.threshold == 0.6
    assert PRESETS["quick"]["epochs"] != 7


@pytest.mark.parametrize("item, message", [("nonsense=1", "unknown setting 'nonsense'"),
                                           ("epochs=many", "epochs='many'"),
                                           ("epochs", "expected KEY=VALUE")])
def test_a_bad_set_is_a_one_line_usage_error(train_calls, capsys, item, message):
    base, calls = train_calls
    assert main([*base, "--set", item]) == 2 and calls == []
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_set_nonsense_exits_2_from_the_command_line(tmp_path):
    proc = run_cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--set",
                   "nonsense=1", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown setting 'nonsense'")
    assert not (tmp_path / "run").exists()


def test_predict_threshold_and_tta_options(tiny_run, tmp_path):
    """--threshold changes the label of a photo (one just above its P(dog) makes a dog a cat)
    and --tta/--no-tta are accepted, the flips changing P(dog)."""
    dog = save_photo(tmp_path / "dog.png", 1, seed=7, size=(60, 44))
    (row,) = json.loads(run_cli("predict", tiny_run, dog, "--json").stdout)
    p_dog = row["p_dog"]
    assert row["label"] == "dog" and 0.5 <= p_dog < 1.0
    above = f"{p_dog + (1 - p_dog) / 2:.6f}"  # between its P(dog) and 1
    text = run_cli("predict", tiny_run, dog, "--threshold", above).stdout
    assert text.split("\t")[:2] == [str(dog), "cat"]
    assert f"P(dog)={p_dog:.4f}" in text  # the same P(dog), another label
    (no_tta,) = json.loads(run_cli("predict", tiny_run, dog, "--json", "--no-tta").stdout)
    assert no_tta["p_dog"] == pytest.approx(p_dog, abs=1e-6)  # the run's own: no flips
    assert no_tta["label"] == "dog"
    (tta,) = json.loads(run_cli("predict", tiny_run, dog, "--json", "--tta").stdout)
    assert tta["p_dog"] != pytest.approx(p_dog, abs=1e-6)
    proc = run_cli("predict", tiny_run, dog, "--threshold", "1.5", check=False)
    assert proc.returncode == 2 and "must be between 0 and 1" in proc.stderr
