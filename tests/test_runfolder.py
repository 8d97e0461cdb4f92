"""The run folder without TensorFlow: file names, run states, history.csv, timings.json and
the export records that decide whether an exported model may stand in for model.keras."""

from __future__ import annotations

import json
import os

import pytest

from catsdogs.errors import RunError
from catsdogs.runfolder import (
    BACKUP_DIR,
    CONFIG_FILE,
    EXPORT_FILES,
    EXPORT_INFO,
    FORMATS,
    HISTORY_TAIL,
    MODEL_FILE,
    QUANTIZED_FORMATS,
    TIMINGS_FILE,
    eval_dir,
    export_status,
    file_sha256,
    is_run_folder,
    read_export_info,
    read_history,
    read_json,
    record_export,
    run_file,
    training_finished,
    validated_rows,
    write_history,
    write_timings,
)


def test_run_states(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_file(run, MODEL_FILE) == os.path.join(str(run), "model.keras")
    assert not is_run_folder(run) and not training_finished(run)
    (run / CONFIG_FILE).write_text("{}")
    (run / BACKUP_DIR).mkdir()
    assert is_run_folder(run) and not training_finished(run)  # interrupted: resumable
    (run / MODEL_FILE).write_bytes(b"model")
    assert not training_finished(run)  # saved, but the backup is not removed yet
    (run / BACKUP_DIR).rmdir()
    assert training_finished(run)


@pytest.mark.parametrize("data, name", [("photos/holdout", "eval-holdout"),
                                        ("other photos/", "eval-other-photos"),
                                        ("x/ä b?c", "eval-b-c"), ("x/...", "eval-...")])
def test_eval_dir_is_named_after_the_folder(tmp_path, data, name):
    assert eval_dir("RUN", data) == os.path.join("RUN", name)


def test_history_round_trip_with_unvalidated_epochs(tmp_path):
    file = str(tmp_path / "history.csv")
    assert read_history(file) == []
    rows = [{"epoch": 1, "loss": 0.9, "accuracy": 0.5, "lr": 0.1, "seconds": 2.0,
             "elapsed": 2.0},
            {"epoch": 2, "loss": 0.7, "accuracy": 0.6, "val_loss": 0.8, "val_accuracy": 0.55,
             "lr": 0.1, "seconds": 3.0, "elapsed": 5.0}]
    write_history(file, rows)
    back = read_history(file)
    assert list(back[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                             *HISTORY_TAIL]
    assert back[0]["val_loss"] == "" and back[1]["val_loss"] == "0.8"
    assert [r["epoch"] for r in validated_rows(back)] == ["2"]


def test_timings_are_the_gaps_between_stages(tmp_path):
    clock = {"start": 10.0, "data": 12.5, "setup": 13.0, "fit": 20.0, "save": 20.25,
             "evaluate": 22.0}
    out = write_timings(str(tmp_path), clock)
    assert out == {"data_seconds": 2.5, "setup_seconds": 0.5, "fit_seconds": 7.0,
                   "save_seconds": 0.25, "evaluate_seconds": 1.75, "total_seconds": 12.0}
    assert read_json(run_file(tmp_path, TIMINGS_FILE)) == out


def test_read_json_is_none_for_missing_bad_or_non_object_files(tmp_path):
    assert read_json(str(tmp_path / "missing.json")) is None
    (tmp_path / "bad.json").write_text("{")
    assert read_json(str(tmp_path / "bad.json")) is None
    (tmp_path / "list.json").write_text("[1]")
    assert read_json(str(tmp_path / "list.json")) is None


def test_export_file_names():
    assert FORMATS == {"onnx": "model.onnx", "tflite": "model.tflite"}
    assert QUANTIZED_FORMATS == {"tflite-int8": "model.int8.tflite"}
    assert EXPORT_FILES == {**FORMATS, **QUANTIZED_FORMATS}


def _exported_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / MODEL_FILE).write_bytes(b"the keras model")
    (run / "model.onnx").write_bytes(b"the onnx model")
    record_export(str(run), "onnx", {"sha256": file_sha256(str(run / "model.onnx")),
                                     "model_sha256": file_sha256(str(run / MODEL_FILE))})
    return run


def test_export_status_accepts_only_the_checked_file_of_the_current_model(tmp_path):
    run = _exported_run(tmp_path)
    assert export_status(str(run), "onnx") == (str(run / "model.onnx"), "ok")
    path, reason = export_status(str(run), "tflite")
    assert path is None and reason.endswith("model.tflite does not exist")
    (run / "model.tflite").write_bytes(b"made elsewhere")
    assert "not recorded in export.json" in export_status(str(run), "tflite")[1]
    (run / "model.onnx").write_bytes(b"another onnx model")
    assert "model.onnx changed since it was exported" in export_status(str(run), "onnx")[1]


def test_export_status_refuses_an_export_of_an_older_model(tmp_path):
    run = _exported_run(tmp_path)
    (run / MODEL_FILE).write_bytes(b"trained further")
    path, reason = export_status(str(run), "onnx")
    assert path is None and "model.keras changed since" in reason
    (run / MODEL_FILE).unlink()
    assert "model.keras does not exist" in export_status(str(run), "onnx")[1]


def test_export_records_are_kept_per_format_and_checked(tmp_path):
    run = _exported_run(tmp_path)
    record_export(str(run), "tflite", {"sha256": "x"})
    assert set(read_export_info(str(run))) == {"onnx", "tflite"}
    (run / EXPORT_INFO).write_text(json.dumps({"onnx": [1]}))
    with pytest.raises(RunError, match="not a catsdogs export record"):
        read_export_info(str(run))
    (run / EXPORT_INFO).write_text("{broken")
    with pytest.raises(RunError, match="unreadable"):
        export_status(str(run), "onnx")
    (run / EXPORT_INFO).unlink()
    assert read_export_info(str(run)) == {}
