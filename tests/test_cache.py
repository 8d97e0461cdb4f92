"""--cache disk: records files (atomic writes, random reads), the same batches as from memory
(pixel-exact, same shuffled order, with outliers), the auto choice, a partial cache rebuilt on
resume, the cache removed once the model is saved, and `catsdogs train --cache disk`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import photo, run_cli, save_photo, train_until_crash
from PIL import Image

import catsdogs.cache as cache
import catsdogs.data.pipeline as pipeline
from catsdogs import training
from catsdogs.augment import AUGMENTATIONS
from catsdogs.config import make_config
from catsdogs.data.outliers import load_other_split
from catsdogs.data.records import (
    OnDisk,
    PhotoStore,
    Records,
    RecordWriter,
    read_manifest,
    remove_partial,
    write_manifest,
)
from catsdogs.data.split import load_split, select
from catsdogs.errors import DataError
from catsdogs.runfolder import read_history


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def make_other(root, kinds=("cars", "flowers"), n=8):
    """Non-pet photos in sub-folders by kind (several sizes)."""
    for k, kind in enumerate(kinds):
        for i in range(n):
            path = root / kind / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(k % 2, (30 + 7 * i, 41), seed=50 * k + i)).save(path)
    return root


def pets(make_folder, cats=9, dogs=9):
    """A labelled folder with photos of several sizes (so the scan resizes in groups)."""
    root = make_folder(cats=cats, dogs=dogs)
    for i in range(3):
        save_photo(root / "Dog" / f"wide{i}.png", 1, seed=90 + i, size=(71, 33))
        save_photo(root / "Cat" / f"tall{i}.png", 0, seed=80 + i, size=(29, 64))
    return root


def test_records_are_written_atomically_and_read_in_any_order(tmp_path):
    file = str(tmp_path / "cache" / "photos-8px.u8")
    photos = images(5, 8)
    with RecordWriter(file, 8) as writer:
        assert writer.append(photos[:3]) == 0 and writer.append(photos[3:]) == 3
        assert not os.path.exists(file)  # under a temporary name until complete
    records = Records(file, 8)
    assert len(records) == 5 and os.listdir(tmp_path / "cache") == ["photos-8px.u8"]
    np.testing.assert_array_equal(records.read([4, 0, 4, 2]), photos[[4, 0, 4, 2]])
    assert records.read([]).shape == (0, 8, 8, 3)
    with pytest.raises(IndexError):
        records.read([5])
    with pytest.raises(ValueError, match="expected"):
        RecordWriter(str(tmp_path / "x.u8"), 8).append(images(1, 9))
    # A write that fails leaves no file under the final name and no temporary file.
    with pytest.raises(RuntimeError), RecordWriter(file, 8) as writer:
        writer.append(images(2, 8, seed=1))
        raise RuntimeError("killed")
    np.testing.assert_array_equal(Records(file, 8).read([0]), photos[:1])  # old one intact
    assert os.listdir(tmp_path / "cache") == ["photos-8px.u8"]
    # What a kill -9 leaves: a temporary file, removed by remove_partial.
    RecordWriter(file, 8).append(images(1, 8))
    assert len(os.listdir(tmp_path / "cache")) == 2
    assert len(remove_partial(str(tmp_path / "cache"))) == 1
    assert os.listdir(tmp_path / "cache") == ["photos-8px.u8"]


def test_a_store_is_complete_or_not_used(tmp_path):
    file, manifest = str(tmp_path / "p.u8"), str(tmp_path / "p.csv")
    assert PhotoStore.open(file, manifest, 8) == (None, "not built yet")
    with RecordWriter(file, 8) as writer:
        writer.append(images(3, 8))
    keys = ["/a,b.jpg", "/new\nline.jpg", "/caf\udce9.jpg"]  # CSV quoting, odd bytes
    write_manifest(manifest, keys)
    assert read_manifest(manifest) == keys
    store, _ = PhotoStore.open(file, manifest, 8)
    assert store.missing(["/x.jpg", *keys]) == ["/x.jpg"]
    np.testing.assert_array_equal(store.select(keys[::-1]).index, [2, 1, 0])
    with open(file, "r+b") as fh:  # half a record lost
        fh.truncate(2 * 8 * 8 * 3 + 10)
    store, why = PhotoStore.open(file, manifest, 8)
    assert store is None and "not a whole number" in why
    with open(file, "r+b") as fh:  # a whole record lost
        fh.truncate(2 * 8 * 8 * 3)
    store, why = PhotoStore.open(file, manifest, 8)
    assert store is None and "2 records for 3 keys" in why


def test_make_dataset_rejects_photos_on_disk_that_do_not_fit(tmp_path):
    file = str(tmp_path / "p.u8")
    with RecordWriter(file, 8) as writer:
        writer.append(images(4, 8))
    on_disk = OnDisk(Records(file, 8), np.arange(3))
    with pytest.raises(ValueError, match="expected 2 photos of 8 px on disk, got 3"):
        pipeline.make_dataset(["a", "b"], [0, 1], 8, 2, images=on_disk)
    with pytest.raises(ValueError, match="expected 3 photos of 16 px on disk, got 3 of 8"):
        pipeline.make_dataset(["a", "b", "c"], [0, 1, 0], 16, 2, images=on_disk)
    with pytest.raises(ValueError, match="outliers: expected photos on disk"):
        pipeline.make_dataset(["a", "b", "c"], [0, 1, 0], 8, 2, images=on_disk,
                              outliers=images(1, 8), outlier_target=[0.5])


def _datasets(cfg):
    """``make_datasets`` of a new run of ``cfg``, as training builds them; its steps per epoch
    are those a time budget plans with before the datasets exist (``_steps_per_epoch``)."""
    training.prepare_run_folder(cfg.out, resume=False, overwrite=False)
    cfg, examples, kept = training._start_or_resume(cfg, False, False)
    datasets = training.make_datasets(cfg, examples, kept)
    assert datasets[3] == training._steps_per_epoch(cfg, examples)
    return datasets


@pytest.mark.parametrize("image_size, train_sizes", [(24, []), (32, [24])])
def test_disk_cache_gives_the_in_memory_batches_pixel_exact(make_folder, tmp_path, monkeypatch,
                                                            capsys, image_size, train_sizes):
    """The training and validation datasets of a disk-cached run hold the same photos, pixel for
    pixel, with the same labels, in the same shuffled order epoch after epoch, as those of the
    in-memory run: with outliers (other photos and synthetic ones) mixed in, and with
    validation at the training size (read from the scan's store) or at a larger one (its own
    store). Augmentation off, so the photos compare before it."""
    monkeypatch.setitem(AUGMENTATIONS, "crop_flip", lambda seed=None: None)
    data, other = pets(make_folder), make_other(tmp_path / "other")
    runs = {}
    for mode in ("memory", "disk"):
        cfg = make_config("quick", data=str(data), out=str(tmp_path / mode), batch_size=4,
                          image_size=image_size, train_sizes=train_sizes, other=str(other),
                          other_holdout="none", other_synthetic=5, cache=mode)
        runs[mode] = _datasets(cfg)
    out = capsys.readouterr().out
    assert "Cache: memory (--cache memory)" in out and "Cache: disk (--cache disk)" in out
    assert os.listdir(tmp_path / "memory").count("cache") == 0
    assert ("Cache: writing" in out) == (train_sizes != [])  # validation at another size
    (memory_train, memory_val, _, steps), (disk_train, disk_val, _, disk_steps) = \
        runs["memory"], runs["disk"]
    assert steps == disk_steps
    n_outliers = 0
    for _ in range(2):  # two epochs: reshuffled, identically
        batches = list(zip(memory_train, disk_train, strict=True))
        for (x_memory, y_memory), (x_disk, y_disk) in batches:
            np.testing.assert_array_equal(x_memory.numpy(), x_disk.numpy())
            np.testing.assert_array_equal(y_memory.numpy(), y_disk.numpy())
            n_outliers += int(np.sum(y_disk.numpy()[:, 1] == 0))
    assert n_outliers == 2 * (12 + 5)  # other train photos + synthetic, each epoch
    first = [y.numpy() for _, y in memory_train]
    assert not all(np.array_equal(a, b) for a, b in
                   zip(first, [y.numpy() for _, y in memory_train], strict=True))  # reshuffled
    for (x_memory, y_memory), (x_disk, y_disk) in zip(memory_val, disk_val, strict=True):
        assert x_disk.shape[1] == image_size
        np.testing.assert_array_equal(x_memory.numpy(), x_disk.numpy())
        np.testing.assert_array_equal(y_memory.numpy(), y_disk.numpy())


def test_a_rebuilt_store_holds_the_photos_the_scan_stored(make_folder, tmp_path, capsys):
    """What --resume rebuilds from splits.csv and other.csv (decoding the files again, drawing
    the synthetic outliers again) is, photo for photo, what the scan stored."""
    cfg = make_config("quick", data=str(pets(make_folder)), out=str(tmp_path / "run"),
                      image_size=24, other=str(make_other(tmp_path / "other")),
                      other_holdout="none", other_synthetic=5, cache="disk")
    training.prepare_run_folder(cfg.out, resume=False, overwrite=False)
    cfg, examples, _ = training._start_or_resume(cfg, False, False)
    scanned = [part.read(np.arange(len(part))) for part in cache.disk_photos(cfg, examples)[:3]]
    assert "Cache: writing" not in capsys.readouterr().out  # the scan's store was complete
    (tmp_path / "run" / "cache" / "photos-24px.csv").unlink()
    rebuilt = cache.disk_photos(cfg, examples)
    assert "Cache: writing" in capsys.readouterr().out
    assert [len(p) for p in rebuilt[:3]] == [len(p) for p in scanned] and rebuilt[3] == 5
    for before, after in zip(scanned, rebuilt[:3], strict=True):
        np.testing.assert_array_equal(before, after.read(np.arange(len(after))))
    assert len(rebuilt[0].records) == len(rebuilt[0]) + len(rebuilt[1]) + len(rebuilt[2])


def test_auto_chooses_disk_when_the_photos_do_not_fit(make_folder, tmp_path, monkeypatch):
    data = str(pets(make_folder))  # 24 photos
    other = str(make_other(tmp_path / "other"))  # 16 photos, 5 synthetic
    one = 32 * 32 * 3
    cfg = make_config("quick", data=data, out=str(tmp_path / "run"), image_size=32,
                      other=other, other_synthetic=5)
    assert cache.estimate_memory(cfg) == (45, 45 * one)
    progressive = make_config("quick", data=data, image_size=40, train_sizes=[32])
    assert cache.estimate_memory(progressive) == (24, 24 * one + 2 * 40 * 40 * 3)  # + val
    limited = make_config("quick", data=data, image_size=40, train_sizes=[32], limit=5)
    assert cache.estimate_memory(limited) == (24, 24 * one + 1 * 40 * 40 * 3)
    cfg.cache_memory_gb = 45 * one / 2**30  # just fits
    assert cache.choose_cache(cfg).mode == "memory"
    cfg.cache_memory_gb = (45 * one - 1) / 2**30
    tight = cache.choose_cache(cfg)
    assert tight.mode == "disk" and tight.estimated_bytes == 45 * one
    assert "45 photos at 32 px" in tight.line() and "more than the" in tight.line() \
        and "--cache-memory-gb" in tight.line()
    cfg.cache_memory_gb = None  # default: a fifth of the memory available
    assert cache.MEMORY_FRACTION == 1 / 5
    assert cache.choose_cache(cfg, available=5 * 45 * one).mode == "memory"
    roomy = cache.choose_cache(cfg, available=5 * 45 * one - 5)
    assert roomy.mode == "disk" and roomy.limit_bytes == 45 * one - 1
    assert "a fifth of the" in roomy.reason
    monkeypatch.setattr(cache, "available_memory_bytes", lambda: None)
    assert cache.choose_cache(cfg).mode == "memory"  # unknown: as before disk caches
    old_run = make_config("quick")  # a run folder from before --cache: no choice recorded
    assert cache.saved_choice(old_run).line() == \
        "Cache: memory (as when the run started: a run from before --cache)"
    monkeypatch.setattr(cache, "estimate_memory", lambda cfg: pytest.fail("listed files"))
    for mode in ("memory", "disk"):  # a forced mode lists nothing
        cfg.cache = mode
        assert cache.choose_cache(cfg) == cache.CacheChoice(mode, f"--cache {mode}")


def test_a_partial_disk_cache_is_rebuilt_on_resume_and_removed_at_the_end(
        make_folder, tmp_path, monkeypatch, capsys):
    """A run that picked the disk cache (auto, tiny limit) decodes every photo once, in the
    scan; killed after epoch 1 with its cache file cut short (and a write's temporary file
    left), --resume keeps the disk cache, rebuilds the file from splits.csv and other.csv
    (decoding only the photos training reads), finishes, and the cache is gone once the
    model is saved."""
    decoded = []
    real_decode = pipeline._decode_path
    monkeypatch.setattr(pipeline, "_decode_path", lambda p: decoded.append(p) or real_decode(p))
    data, other = pets(make_folder), make_other(tmp_path / "other")
    run = tmp_path / "run"
    cfg = make_config("quick", data=str(data), out=str(run), image_size=32, epochs=3,
                      batch_size=8, other=str(other), other_holdout="none", other_synthetic=4,
                      cache_memory_gb=1e-6)
    train_until_crash(training.train, cfg, 1, monkeypatch)
    out = capsys.readouterr().out
    assert "Cache: disk (--cache auto: 44 photos at 32 px" in out and "more than" in out
    assert decoded == []  # decoded once, by the scan, straight to disk
    config = json.loads((run / "config.json").read_text())
    assert config["cache"] == "auto" and config["cache_choice"]["mode"] == "disk"
    records = run / "cache" / "photos-32px.u8"
    assert records.stat().st_size == 44 * 32 * 32 * 3  # pets, other photos, synthetic
    with open(records, "r+b") as fh:
        fh.truncate(records.stat().st_size // 2)
    (run / "cache" / ".photos-32px.u8.abc.tmp").write_bytes(b"half a record")
    training.train(make_config("quick", out=str(run)), resume=True, progress=False)
    out = capsys.readouterr().out
    assert "Cache: disk (as when the run started: --cache auto" in out
    assert "Cache: writing" in out and "removed 1 partial file(s)" in out
    examples = load_split(str(run / "splits.csv"))
    needed = (select(examples, "train")[0] + select(examples, "val")[0]
              + [e.path for e in load_other_split(str(run / "other.csv")) if e.split == "train"])
    assert sorted(decoded) == sorted(os.fsencode(p) for p in needed)  # each once, no test photo
    assert [int(r["epoch"]) for r in read_history(str(run / "history.csv"))] == [1, 2, 3]
    assert (run / "model.keras").exists() and not (run / "cache").exists()


def test_a_failed_scan_leaves_no_cache_file(make_folder, tmp_path):
    other = make_other(tmp_path / "other", kinds=("cars",))  # too few to split
    cfg = make_config("quick", data=str(pets(make_folder)), out=str(tmp_path / "run"),
                      image_size=32, other=str(other), other_holdout="none", cache="disk")
    with pytest.raises(DataError, match="too few other photos"):
        training.train(cfg, progress=False)
    assert os.listdir(tmp_path / "run" / "cache") == []


def test_catsdogs_train_cache_disk_end_to_end(make_folder, tmp_path):
    data = pets(make_folder, cats=12, dogs=12)
    other = make_other(tmp_path / "other", kinds=("cars", "flowers", "trees"))  # trees held out
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, "--out", run, "--preset", "quick", "--image-size",
                   "32", "--epochs", "2", "--batch-size", "8", "--other", other,
                   "--cache", "disk", "--no-progress")
    assert "Cache: disk (--cache disk)" in proc.stdout
    assert "photos at 32 px on disk" in proc.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["cache"] == "disk" and config["cache_choice"]["mode"] == "disk"
    assert json.loads((run / "metrics.json").read_text())["n"] > 0
    assert not (run / "cache").exists()
