"""Models (registry, the exact baseline architecture) and the tf.data pipeline."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import save_photo

from catsdogs.data.pipeline import make_dataset, resize_uint8
from catsdogs.models import available_models, build_model


def test_baseline_is_the_tutorial_net():
    m = build_model("baseline", 64)
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds == ["InputLayer", "Resize", "Rescaling", "Conv2D", "MaxPooling2D", "Conv2D",
                     "MaxPooling2D", "Flatten", "Dense", "Dense", "Activation"]
    convs = [layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.activation.__name__) for c in convs] == \
        [(32, (3, 3), "relu")] * 2
    pools = [layer for layer in m.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert all(p.pool_size == (2, 2) and p.strides == (2, 2) for p in pools)
    # Hand-computed: conv 3*3*3*32+32 = 896; conv 3*3*32*32+32 = 9,248; 64→62→31→29→14:
    # flatten 14*14*32 = 6,272; dense 6,272*128+128 = 802,944; output 128+1 = 129.
    assert m.count_params() == 896 + 9_248 + 802_944 + 129
    assert m.get_layer("p_dog").activation.__name__ == "sigmoid"


@pytest.mark.parametrize("name", available_models())
def test_models_take_any_size_and_output_probabilities(name):
    m = build_model(name, 48)
    for h, w in ((48, 48), (100, 37)):
        out = np.asarray(m(np.random.randint(0, 256, (2, h, w, 3)).astype("float32")))
        assert out.shape == (2, 1) and out.dtype == np.float32
        assert np.all((out >= 0) & (out <= 1))
    assert m.get_layer("features") is not None


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", 64)


def test_model_resize_matches_pipeline_resize():
    """A raw photo resized inside the model equals the same photo resized by the pipeline."""
    m = build_model("baseline", 64)
    head = keras.Model(m.input, m.get_layer("rescale").output)
    raw = np.random.default_rng(0).integers(0, 256, (1, 90, 70, 3)).astype("float32")
    inside = np.asarray(head(raw))
    outside = np.asarray(resize_uint8(raw, 64), dtype=np.float32) / 255.0
    assert inside.shape == outside.shape == (1, 64, 64, 3)
    assert np.abs(inside - outside).max() <= 0.5 / 255 + 1e-6  # only uint8 rounding differs
    same = np.asarray(head(np.asarray(resize_uint8(raw, 64), np.float32)))
    np.testing.assert_allclose(same, outside, atol=1e-7)  # already-sized input passes unchanged


def test_dataset_shapes_and_dtypes(tmp_path):
    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=i, size=(50 + i, 40))) for i in
             range(5)]
    ds = make_dataset(paths, [0, 1, 0, 1, 0], 32, batch_size=2)
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [2, 2, 1]
    x, y = batches[0]
    assert x.shape == (2, 32, 32, 3) and x.dtype.name == "float32"
    assert y.shape == (2, 1) and y.dtype.name == "float32"
    assert 0 <= float(np.min(x)) and float(np.max(x)) <= 255
    assert float(np.max(x)) == float(np.round(np.max(x)))  # cached as uint8 pixels
    images_only = make_dataset(paths, None, 32, batch_size=5)
    assert next(iter(images_only)).shape == (5, 32, 32, 3)


@pytest.mark.parametrize("batch_size, max_pending_bytes", [(3, 2**30), (64, 0)])
def test_scan_keeps_each_photo_resized_exactly_as_the_pipeline_would(make_folder, batch_size,
                                                                     max_pending_bytes):
    """Decode once: the arrays the scan keeps, fed to ``make_dataset``, give the same batches
    (same pixels, same seeded shuffle, epoch after epoch) as decoding the files there, whether
    photos are resized in batches (of 3 here) or one by one (the byte limit reached)."""
    from catsdogs.data.pipeline import ResizedPhotos
    from catsdogs.data.scan import scan_folder

    root = make_folder(cats=5, dogs=4)
    save_photo(root / "Dog" / "wide.png", 1, seed=9, size=(70, 33))
    (root / "Cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    resized = ResizedPhotos(24, batch_size=batch_size, max_pending_bytes=max_pending_bytes)
    result = scan_folder(root, progress=False, keep=resized)
    kept = resized.finish()
    assert len(result.photos) == 10 and len(result.skipped) == 1
    assert set(kept) == {p.path for p in result.photos}  # the broken file is not kept
    paths, labels = [p.path for p in result.photos], [p.label for p in result.photos]
    images = np.stack([kept[p] for p in paths])
    assert images.shape == (10, 24, 24, 3) and images.dtype == np.uint8
    for shuffle in (False, True):
        decoded = make_dataset(paths, labels, 24, 4, shuffle=shuffle, seed=5)
        kept = make_dataset(paths, labels, 24, 4, shuffle=shuffle, seed=5, images=images)
        for _ in range(2):
            for (xa, ya), (xb, yb) in zip(decoded, kept, strict=True):
                np.testing.assert_array_equal(xa.numpy(), xb.numpy())
                np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    with pytest.raises(ValueError, match=r"expected \(10, 32, 32, 3\) uint8"):
        make_dataset(paths, labels, 32, 4, images=images)


def test_training_reads_the_photos_the_scan_decoded(make_folder, tmp_path, monkeypatch):
    """Training decodes no photo a second time when it trains and validates at one size; with
    a larger validation size (progressive resizing), only the validation photos are decoded,
    each once."""
    import os

    import catsdogs.data.pipeline as pipeline
    from catsdogs.config import make_config
    from catsdogs.data.split import load_split, select
    from catsdogs.train import train

    decoded = []
    real = pipeline._decode_path
    monkeypatch.setattr(pipeline, "_decode_path", lambda p: decoded.append(p) or real(p))
    data = str(make_folder(cats=12, dogs=12))
    train(make_config("quick", data=data, out=str(tmp_path / "one"), image_size=32, epochs=2,
                      batch_size=8), progress=False, evaluate=False)
    assert decoded == []
    run = train(make_config("quick", data=data, out=str(tmp_path / "two"), image_size=40,
                            train_sizes=[24, 32], epochs=2, batch_size=8),
                progress=False, evaluate=False)
    val_paths = select(load_split(f"{run}/splits.csv"), "val")[0]
    assert sorted(decoded) == sorted(os.fsencode(p) for p in val_paths) and val_paths


def test_datasets_run_without_the_tf_data_autotuner(tmp_path):
    """Regression guard: with autotuning on, Keras' per-epoch iterator teardown waited for
    tf.data's autotune thread (idle stalls of 5–35 s per epoch; see ``pipeline_options``)."""
    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=i)) for i in range(3)]
    for ds in (make_dataset(paths, [0, 1, 0], 16, batch_size=2, shuffle=True),
               make_dataset(paths, None, 16, batch_size=2, cache=False)):
        assert ds.options().autotune.enabled is False
        assert ds.options().deterministic is True
        assert next(iter(ds)) is not None


def test_crop_flip_changes_size_between_epochs_of_one_pipeline(tmp_path):
    """Progressive resizing: the same dataset yields the size set before each pass."""
    from catsdogs.augment import crop_flip_augmentation

    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=i)) for i in range(6)]
    augment = crop_flip_augmentation(seed=1)
    ds = make_dataset(paths, [0, 1] * 3, 40, batch_size=4, shuffle=True, augment=augment)
    assert {tuple(x.shape[1:3]) for x, _ in ds} == {(40, 40)}
    augment.set_output_size(24)
    assert {tuple(x.shape[1:3]) for x, _ in ds} == {(24, 24)}
    augment.set_output_size(0)
    assert {tuple(x.shape[1:3]) for x, _ in ds} == {(40, 40)}


def test_light_crop_keeps_at_least_70_percent_of_the_area():
    """Crops of ``light_crop_flip`` cover ≥ 0.7 of the area with aspect 3/4–4/3, so each side
    spans ≥ √(0.7 · 3/4) ≈ 0.72 of the photo; ``crop_flip`` (0.4–1) goes below that. Read off
    images whose pixel value is the column (or row) index."""
    from catsdogs.augment import AUGMENTATIONS

    n, side = 256, 33
    ramp = np.arange(side, dtype=np.float32)
    cols = np.broadcast_to(ramp[None, None, :, None], (n, side, side, 3))
    rows = np.broadcast_to(ramp[None, :, None, None], (n, side, side, 3))

    def spans(name, images):
        out = AUGMENTATIONS[name](seed=3)(tf.constant(images), training=True).numpy()[..., 0]
        return (out.max(axis=(1, 2)) - out.min(axis=(1, 2))) / (side - 1)

    for images in (cols, rows):
        light = spans("light_crop_flip", images)
        assert light.min() >= np.sqrt(0.7 * 3 / 4) - 1e-3 and light.max() <= 1 + 1e-5
        assert spans("crop_flip", images).min() < 0.68


def test_train_size_schedule():
    from catsdogs.config import make_config

    cfg = make_config("default", epochs=18, train_sizes=[96, 112])
    assert [cfg.train_size(e) for e in range(18)] == [96] * 9 + [112] * 9
    cfg = make_config("default", epochs=10, train_sizes=[64, 96, 128])
    assert [cfg.train_size(e) for e in range(10)] == [64] * 4 + [96] * 3 + [128] * 3
    cfg = make_config("quick", epochs=3, image_size=80)
    assert [cfg.train_size(e) for e in range(3)] == [80] * 3


def test_progressive_resizing_trains_small_and_saves_at_image_size(make_folder, tmp_path,
                                                                   capsys):
    from catsdogs.config import make_config
    from catsdogs.run import load_model
    from catsdogs.train import read_history, train

    data = make_folder(cats=12, dogs=12)
    cfg = make_config("quick", data=str(data), out=str(tmp_path / "run"), image_size=40,
                      train_sizes=[24, 32], epochs=2, batch_size=8)
    run = train(cfg, progress=False)
    out = capsys.readouterr().out
    assert "Epoch 1: training at 24×24 px" in out and "Epoch 2: training at 32×32 px" in out
    assert len(read_history(f"{run}/history.csv")) == 2
    model = load_model(f"{run}/model.keras")
    resize = model.get_layer("resize")
    assert (resize.height, resize.width) == (40, 40) and not resize.passthrough
    head = keras.Model(model.input, model.get_layer("rescale").output)
    assert head(np.zeros((1, 24, 24, 3), "float32")).shape == (1, 40, 40, 3)


def test_progressive_resizing_needs_a_resizing_augmentation(make_folder, tmp_path):
    from catsdogs.config import make_config
    from catsdogs.train import train

    cfg = make_config("baseline", data=str(make_folder()), out=str(tmp_path / "run"),
                      train_sizes=[32, 64], epochs=2)
    with pytest.raises(ValueError, match="progressive resizing"):
        train(cfg, progress=False)


def test_train_sizes_option(monkeypatch, capsys, tmp_path):
    import catsdogs.train
    from catsdogs.cli import main
    from catsdogs.config import PRESETS

    seen = []
    monkeypatch.setattr(catsdogs.train, "train", lambda cfg, **kw: seen.append(cfg))
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main([*base, "--train-sizes", "24,32"]) == 0
    assert main([*base, "--image-size", "48"]) == 0  # alone: train at that size too
    assert main([*base, "--image-size", "48", "--train-sizes", "none"]) == 0
    assert main(base) == 0
    default = PRESETS["default"]  # without options, the preset's own sizes
    assert [(c.image_size, c.train_sizes) for c in seen] == \
        [(default["image_size"], [24, 32]), (48, []), (48, []),
         (default["image_size"], default["train_sizes"])]
    with pytest.raises(SystemExit):
        main([*base, "--train-sizes", "big"])
    assert "expected pixel sizes like 96,112" in capsys.readouterr().err


def test_progressive_resize_gives_every_batch_of_an_epoch_that_epochs_size(tmp_path):
    """Keras builds the next epoch's iterator (which starts prefetching) at the end of an epoch,
    before validation and before the next ``on_epoch_begin``; no batch may have a stale size."""
    from catsdogs.augment import crop_flip_augmentation
    from catsdogs.config import make_config
    from catsdogs.train import ProgressiveResize

    seen = []

    class Spy(keras.layers.Layer):
        def call(self, x, training=None):
            if training:
                seen.append(int(x.shape[1]))
            return keras.ops.mean(x, axis=(1, 2))

    paths = [str(save_photo(tmp_path / f"{i}.png", i % 2, seed=i)) for i in range(16)]
    labels = [i % 2 for i in range(16)]
    augment = crop_flip_augmentation(seed=1)
    ds = make_dataset(paths, labels, 40, batch_size=2, shuffle=True, augment=augment)
    val = make_dataset(paths[:4], labels[:4], 40, batch_size=2)
    model = keras.Sequential([keras.Input((None, None, 3)), Spy(), keras.layers.Dense(1)])
    model.compile("sgd", "mse", run_eagerly=True)
    cfg = make_config("quick", epochs=4, image_size=40, train_sizes=[24, 32])
    model.fit(ds, validation_data=val, epochs=4, verbose=0,
              callbacks=[ProgressiveResize(cfg, augment)])
    assert seen == [24] * 16 + [32] * 16


@pytest.mark.parametrize("preset_env, expected", [(None, "1"), ("0", "0")])
def test_importing_catsdogs_turns_onednn_on_unless_the_user_chose(preset_env, expected):
    """TensorFlow leaves oneDNN off on AVX2-only CPUs; `import catsdogs` turns it on (before TF
    is imported) but never overrides the user's own TF_ENABLE_ONEDNN_OPTS."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset_env is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset_env
    code = ("import os, catsdogs; from catsdogs.config import software_versions; "
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], "
            "software_versions()['tf_enable_onednn_opts'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [expected, expected]
