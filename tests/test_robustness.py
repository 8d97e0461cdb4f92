"""Trustworthiness: fuzzed image bytes, unsafe model files, run folders never clobbered,
atomic writes, Ctrl-C during training."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from conftest import photo, run_cli, save_photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catsdogs.data.images import load_image
from catsdogs.errors import ImageError, RunError
from catsdogs.io import atomic_path, atomic_write_text
from catsdogs.run import load_model


def _encode(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(1, (24, 16), seed=5)).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {fmt: _encode(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP")}


def _check(data: bytes) -> None:
    try:
        arr = load_image(data, name="fuzz")
    except ImageError as exc:
        assert exc.reason and exc.path == "fuzz"
        return
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[0] >= 1 and arr.shape[1] >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    _check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(SEEDS)),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_fuzz_mutated_images(fmt, edits, cut):
    data = bytearray(SEEDS[fmt])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _check(bytes(data))


def test_lambda_model_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(RunError, match="refused to load"):
        load_model(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"just text", b"PK\x03\x04 broken zip"])
def test_non_model_files_are_refused(tmp_path, content):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(RunError, match="model"):
        load_model(str(path))


def test_zip_that_is_not_a_keras_model(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(RunError, match="cannot load model"):
        load_model(str(path))


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


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half of the new con")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


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
    import catsdogs.train as train_mod
    from catsdogs.config import make_config

    data = make_folder(cats=12, dogs=12)
    cfg = make_config("quick", data=str(data), out=str(tmp_path / "run"), image_size=32,
                      epochs=2, batch_size=8)

    def crash(*args, **kwargs):
        raise OSError("disk full while saving model.keras")

    with monkeypatch.context() as m:
        m.setattr(train_mod, "atomic_path", crash)
        with pytest.raises(OSError, match="disk full"):
            train_mod.train(cfg, progress=False)
    run = tmp_path / "run"
    assert not (run / "model.keras").exists() and (run / "backup").is_dir()
    history_before = (run / "history.csv").read_text()
    train_mod.train(make_config("quick", out=str(run)), resume=True, progress=False)
    assert (run / "history.csv").read_text() == history_before  # no epoch was run again
    assert (run / "model.keras").exists() and (run / "metrics.json").exists()
    assert not (run / "backup").exists()
    with pytest.raises(RunError, match="already complete"):
        train_mod.train(make_config("quick", out=str(run)), resume=True, progress=False)


def test_checkpoint_keeps_the_best_validated_weights_through_unvalidated_epochs(tmp_path):
    from catsdogs.train import AtomicModelCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "best.weights.h5")
    checkpoint = AtomicModelCheckpoint(path, monitor="val_loss", mode="min", save_best_only=True,
                                       save_weights_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_begin(0)
    checkpoint.on_epoch_end(0, {"loss": 0.9, "val_loss": 0.5})
    saved = open(path, "rb").read()
    model.set_weights([w + 1 for w in model.get_weights()])
    checkpoint.on_epoch_begin(1)
    checkpoint.on_epoch_end(1, {"loss": 0.1})  # not validated: Keras alone would save this
    assert open(path, "rb").read() == saved
    checkpoint.on_epoch_begin(2)
    checkpoint.on_epoch_end(2, {"loss": 0.1, "val_loss": 0.4})
    assert open(path, "rb").read() != saved


def test_validating_every_other_epoch_survives_a_crash_and_resumes(make_folder, tmp_path,
                                                                   monkeypatch):
    import catsdogs.train as train_mod
    from catsdogs.config import make_config

    data = make_folder(cats=12, dogs=12)
    cfg = make_config("quick", data=str(data), out=str(tmp_path / "run"), image_size=32,
                      epochs=5, batch_size=8, val_every=2)
    run = tmp_path / "run"
    real_end = keras.callbacks.BackupAndRestore.on_epoch_end

    def crash_after_epoch_3(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if epoch == 2:
            raise OSError("power cut")

    with monkeypatch.context() as m:
        m.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", crash_after_epoch_3)
        with pytest.raises(OSError, match="power cut"):
            train_mod.train(cfg, progress=False)
    train_mod.train(make_config("quick", out=str(run)), resume=True, progress=False)
    rows = train_mod.read_history(str(run / "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [int(r["epoch"]) for r in rows if r["val_loss"]] == [2, 4, 5]
    assert list(rows[0])[:5] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    report = (run / "report.md").read_text()
    assert "Trained 5 epochs" in report and "validated after 3 of them" in report
    assert (run / "model.keras").exists() and (run / "plots" / "history.png").exists()


def test_validation_schedule_and_option(monkeypatch, tmp_path, capsys):
    import catsdogs.train
    from catsdogs.cli import main
    from catsdogs.config import make_config

    assert make_config("quick", epochs=5, val_every=2).validation_epochs() == [2, 4, 5]
    assert make_config("quick", epochs=4, val_every=2).validation_epochs() == [2, 4]
    assert make_config("quick", epochs=3).validation_epochs() == [1, 2, 3]
    assert make_config("default").val_every == 2  # `default` validates every other epoch
    assert make_config("default", epochs=7).validation_epochs() == [2, 4, 6, 7]
    with pytest.raises(ValueError, match="val_every"):
        make_config("quick", val_every=0).validation_epochs()
    seen = []
    monkeypatch.setattr(catsdogs.train, "train", lambda cfg, **kw: seen.append(cfg))
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main([*base, "--val-every", "3"]) == 0 and main(base) == 0
    assert [c.val_every for c in seen] == [3, 2]
    with pytest.raises(SystemExit):
        main([*base, "--val-every", "0"])
    assert "must be at least 1" in capsys.readouterr().err
