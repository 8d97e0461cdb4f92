"""Shared fixtures: synthetic photos made with Pillow/NumPy, a tiny trained run, and the path to
the real photos in ../shared/data (required when CI=true)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CATSDOGS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _no_user_cache(tmp_path_factory):
    """Tests, and the commands they run, never read or write the user's cache of machine
    timings (:func:`catsdogs.system.cache_dir`), from the first (module) fixture on."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("CATSDOGS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def _untimed_precision(request, monkeypatch, tmp_path_factory):
    """``precision=auto`` on a CPU with native bfloat16 times a training step in float32 and in
    bfloat16 (:func:`catsdogs.training.step_seconds`): two builds and traces per ``train``, and
    a choice that follows the machine's noise. Tests get float32 from a stub (a tie goes to
    float32), except those marked ``timed_precision``. Each test gets an empty cache of
    timings (:func:`catsdogs.system.cache_dir`), so none depends on another's."""
    monkeypatch.setenv("CATSDOGS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    if not request.node.get_closest_marker("timed_precision"):
        monkeypatch.setattr("catsdogs.training.step_seconds", lambda cfg, precision, size: 1.0)


def train_until_crash(train, cfg, epochs_done: int, monkeypatch) -> None:
    """Run ``train(cfg, progress=False)`` and crash it (``OSError("power cut")``) right after
    epoch ``epochs_done`` (1-based) is in the resumable backup."""
    real_end = keras.callbacks.BackupAndRestore.on_epoch_end

    def crash(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if epoch == epochs_done - 1:
            raise OSError("power cut")

    with monkeypatch.context() as m:
        m.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", crash)
        with pytest.raises(OSError, match="power cut"):
            train(cfg, progress=False)


def require_shared(sub: str) -> Path:
    """Path of ``../shared/data/<sub>``; fails loudly under CI=true when missing, else skips."""
    path = SHARED_DATA / sub
    if not path.exists():
        msg = f"real photos not found at {path} (set CATSDOGS_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def photo(label: int, size=(48, 40), seed=0) -> np.ndarray:
    """A synthetic 'photo' whose class is learnable: cats are reddish with a bright square,
    dogs bluish with a dark stripe; noise varies with ``seed``. ``(h, w, 3) uint8``."""
    rng = np.random.default_rng(seed * 2 + label)
    w, h = size
    img = rng.integers(0, 80, (h, w, 3)).astype(np.int32)
    if label == 0:
        img[..., 0] += 150
        img[h // 4: h // 2, w // 4: w // 2] = 250
    else:
        img[..., 2] += 150
        img[:, w // 2: w // 2 + max(2, w // 8)] = 10
    return np.clip(img, 0, 255).astype(np.uint8)


def photos_of_sizes(n=12, seed=5) -> list[np.ndarray]:
    """Photos of several sizes and both classes, (H, W, 3) uint8."""
    sizes = [(48, 40), (31, 77), (200, 120), (32, 32)]
    return [photo(i % 2, sizes[i % len(sizes)], seed=seed + i) for i in range(n)]


def save_photo(path: Path, label: int, seed: int = 0, size=(48, 40), fmt: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(label, size, seed)).save(path, format=fmt)
    return path


def save_every_format(folder: Path) -> Path:
    """One file per accepted format/mode, plus two bad files."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo(1, (60, 44), seed=3))
    rgb.save(folder / "a.jpg")
    rgb.save(folder / "b.png")
    rgb.convert("RGBA").save(folder / "c.png")
    rgb.convert("P").save(folder / "d.gif")
    rgb.convert("L").save(folder / "e.jpg")
    rgb.convert("CMYK").save(folder / "f.jpg")
    rgb.save(folder / "g.webp")
    rgb.save(folder / "h.bmp")
    (folder / "z-broken.jpg").write_bytes(b"not an image at all")
    (folder / "z-empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture
def make_folder(tmp_path):
    """Build a labelled folder: ``make_folder(cats=n, dogs=m, layout="folders"|"flat")``."""

    def make(cats=6, dogs=6, layout="folders", names=("Cat", "Dog"), root=None):
        root = Path(root or tmp_path / "photos")
        for label, n in ((0, cats), (1, dogs)):
            for i in range(n):
                if layout == "folders":
                    p = root / names[label] / f"{i}.jpg"
                else:
                    p = root / f"{('cat', 'dog')[label]}.{i}.jpg"
                save_photo(p, label, seed=i)
        return root

    return make


def run_cli(*args, check=True, timeout=900, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m catsdogs.cli ARGS`` and return the completed process (text output)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "catsdogs.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"catsdogs {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run trained in-process on 40 synthetic photos per class (quick preset, 32 px, 3
    epochs): a real model.keras and run folder for predict/evaluate/serve tests.

    Its rejection threshold ("neither a cat nor a dog") is removed after training, so a photo's
    label depends on P(dog) alone: chosen on 8 validation photos, the threshold is the largest
    of their 8 OOD scores, and about one new cat or dog in nine would be called ``other`` by
    chance. Tests of the rejection train their own runs (test_rejection.py) or set a threshold
    per call (test_predict.py)."""
    from catsdogs.api import train
    from catsdogs.runfolder import CONFIG_FILE, read_json, run_file, write_json

    root = tmp_path_factory.mktemp("tiny")
    data = root / "photos"
    for label, name in ((0, "cats"), (1, "dogs")):
        for i in range(40):
            save_photo(data / name / f"{i}.png", label, seed=i)
    run = root / "run"
    train(data, run, "quick", image_size=32, epochs=3, batch_size=16, progress=False)
    config = read_json(run_file(run, CONFIG_FILE))
    assert config["inference"]["ood_threshold"] is not None  # train calibrated it
    config["inference"]["ood_threshold"] = None
    write_json(run_file(run, CONFIG_FILE), config)
    return run


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    """A private copy of the tiny run with both float32 exports (ONNX, LiteRT); the shared run
    stays Keras-only."""
    import shutil

    from catsdogs.export import export_run
    from catsdogs.runfolder import FORMATS

    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_run, run)
    for fmt in FORMATS:
        export_run(str(run), fmt, verbose=False)
    return run
