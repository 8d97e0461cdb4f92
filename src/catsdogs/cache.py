"""Where training keeps its decoded photos (``--cache``): in memory, or on disk in the run folder.

**Memory** (the 25k-photo PetImages case): the scan keeps every photo resized
(:class:`catsdogs.data.pipeline.ResizedPhotos`) and the datasets hold the train and validation
splits as ``uint8`` arrays: about 1.2 GB at 128 px, but 49 GB for a million photos.

**Disk** (:mod:`catsdogs.data.records`): a *store* per photo side, ``RUN/cache/photos-<px>px.u8``
(fixed-size records) plus its manifest ``photos-<px>px.csv`` (the key of each record).

* A new run decodes each photo once, in the scan, as in memory: the scan's keep
  (:class:`catsdogs.data.pipeline.StoredPhotos`) appends every readable photo, pets and
  ``--other`` photos, at :meth:`TrainConfig.cache_size` to the store; the synthetic outliers
  follow. The scan cannot know the split yet, so the store holds the test split and exact
  duplicates too (as the in-memory path does until the split is made); the datasets then pick
  the train split, the outliers and the validation split by key, without copying.
* Validation at another side than training (progressive resizing) gets its own store, decoded
  from the files (the in-memory path decodes those photos in the first epoch instead).
* Written under a temporary name and renamed when complete, after its manifest, so a resumed
  run (which does not scan) reuses a complete store and rebuilds a missing, partial or
  truncated one from ``splits.csv`` and ``other.csv``, decoding only the photos it needs.
* Removed once ``model.keras`` is saved (:func:`remove_cache`).

**Auto** (:func:`choose_cache`) estimates before the scan the bytes the in-memory path would
hold and compares them with :attr:`TrainConfig.cache_memory_gb` (default: a fifth of the memory
available). One line says which it chose and why; the choice is recorded as
``config.json``'s ``cache_choice`` and kept by ``--resume``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from catsdogs.config import TrainConfig
from catsdogs.data.outliers import load_other_split, synthetic_outliers
from catsdogs.data.pipeline import StoredPhotos, write_decoded
from catsdogs.data.records import (
    SYNTHETIC_PREFIX,
    OnDisk,
    PhotoStore,
    RecordWriter,
    record_bytes,
    remove_partial,
    synthetic_key,
    write_manifest,
)
from catsdogs.data.scan import find_labelled_files, walk_files
from catsdogs.data.split import Example, select
from catsdogs.distributed import Cluster, shard
from catsdogs.runfolder import CACHE_DIR, OTHER_SPLITS_FILE, cache_files, run_file
from catsdogs.system import available_memory_bytes

MEMORY_FRACTION = 1 / 5
"""Default :attr:`TrainConfig.cache_memory_gb`: this share of the memory available. The
in-memory path's peak holds its decoded photos about four times over (the scan's arrays, the
stacked splits, TensorFlow's copy of them and the shuffle buffer's): PetImages at 128 px,
1.14 GiB decoded, peaked at 4.94 GiB of RSS in the data path alone, 0.61 GiB of it
TensorFlow's own (docs/recipes.md); the model and other processes need the rest."""

GIB = 2**30


@dataclass(frozen=True)
class CacheChoice:
    """Where a run keeps its decoded photos, and why (``config.json``'s ``cache_choice``).

    Attributes:
        mode: ``"memory"`` or ``"disk"``.
        reason: why, in words.
        photos: photos the estimate counted (None when not estimated: a forced mode).
        estimated_bytes: bytes the in-memory path would hold (None when not estimated).
        limit_bytes: the memory limit they were compared with (None when not compared).
    """

    mode: str
    reason: str
    photos: int | None = None
    estimated_bytes: int | None = None
    limit_bytes: int | None = None

    def line(self) -> str:
        """The one line training prints."""
        return f"Cache: {self.mode} ({self.reason})"


def estimate_memory(cfg: TrainConfig) -> tuple[int, int]:
    """What the in-memory path would hold, from file listings (nothing is decoded): every file
    of :attr:`TrainConfig.data` and of :attr:`TrainConfig.other` (the scan keeps each readable
    one at :meth:`TrainConfig.cache_size` until the split is known) plus the synthetic
    outliers, at that size; and, when validation runs at another size, the validation split
    again at :attr:`TrainConfig.image_size` (tf.data's in-memory cache).

    Returns:
        ``(photos, bytes)``: photos at the cache size, bytes of them all.

    Raises:
        DataError: the photo folder does not exist.
    """
    pets = len(find_labelled_files(cfg.data)[1])
    other = len(walk_files(cfg.other, [])) + cfg.other_synthetic if cfg.other else 0
    total = (pets + other) * record_bytes(cfg.cache_size())
    if cfg.image_size != cfg.cache_size():
        used = pets if cfg.limit is None else min(pets, 2 * cfg.limit)
        total += int(used * cfg.val_fraction) * record_bytes(cfg.image_size)
    return pets + other, total


def choose_cache(cfg: TrainConfig, available: int | None = None) -> CacheChoice:
    """Resolve :attr:`TrainConfig.cache` for a new run: ``memory`` and ``disk`` as given;
    ``auto`` → ``memory`` when :func:`estimate_memory` fits the limit
    (:attr:`TrainConfig.cache_memory_gb`, default :data:`MEMORY_FRACTION` of ``available``),
    else ``disk``; ``memory`` when the memory available is unknown.

    Args:
        available: bytes of memory available (default:
            :func:`catsdogs.system.available_memory_bytes`).

    Raises:
        DataError: ``auto`` and the photo folder does not exist.
    """
    if cfg.cache != "auto":
        return CacheChoice(cfg.cache, f"--cache {cfg.cache}")
    photos, need = estimate_memory(cfg)
    what = f"{photos:,} photos at {cfg.cache_size()} px ≈ {need / GIB:.2f} GiB decoded"
    if cfg.cache_memory_gb is not None:
        limit = int(cfg.cache_memory_gb * GIB)
        source = "--cache-memory-gb"
    else:
        available = available_memory_bytes() if available is None else available
        if available is None:
            return CacheChoice("memory", f"--cache auto: {what}; memory available unknown",
                               photos, need)
        limit = int(available * MEMORY_FRACTION)
        source = f"a fifth of the {available / GIB:.1f} GiB available"
    fits = need <= limit
    reason = (f"--cache auto: {what}, {'within' if fits else 'more than'} the "
              f"{limit / GIB:.2f} GiB limit ({source})")
    return CacheChoice("memory" if fits else "disk", reason, photos, need, limit)


def saved_choice(cfg: TrainConfig) -> CacheChoice:
    """The choice a resumed run made when it started (``memory`` for runs from before disk
    caches existed)."""
    saved = cfg.cache_choice or {"mode": "memory", "reason": "a run from before --cache"}
    return CacheChoice(**{**saved, "reason": f"as when the run started: {saved['reason']}"})


def uses_disk(cfg: TrainConfig) -> bool:
    """Whether the run (new after :func:`record`, or resumed) keeps its photos on disk."""
    return cfg.cache_choice.get("mode") == "disk"


def record(cfg: TrainConfig, choice: CacheChoice) -> None:
    """Keep ``choice`` in ``cfg`` (saved in ``config.json`` as ``cache_choice``)."""
    cfg.cache_choice = asdict(choice)


@contextlib.contextmanager
def scanning_to_disk(cfg: TrainConfig) -> Iterator[StoredPhotos]:
    """The scan's keep for a new disk-cached run: yields a :class:`StoredPhotos` writing the
    store at :meth:`TrainConfig.cache_size`; afterwards appends the synthetic outliers (with
    :attr:`TrainConfig.other`), writes the manifest and commits the records file. On an
    exception nothing is committed and the temporary file is removed.
    """
    size = cfg.cache_size()
    records, manifest = cache_files(cfg.out, size)
    keep = StoredPhotos(RecordWriter(records, size))
    try:
        yield keep
        keep.finish()
        keys = list(keep.keys)
        if cfg.other and cfg.other_synthetic:
            keep.writer.append(synthetic_outliers(cfg.other_synthetic, size, seed=cfg.seed))
            keys += [synthetic_key(i) for i in range(cfg.other_synthetic)]
        write_manifest(manifest, keys)
        keep.writer.commit()
    except BaseException:
        keep.writer.abort()
        raise
    print(f"Cache: {len(keys):,} photos at {size} px on disk, "
          f"{len(keys) * record_bytes(size) / GIB:.2f} GiB → {records}")


def ensure_store(run: str, size: int, keys: list[str], seed: int) -> PhotoStore:
    """The run's store of ``size``-px photos, holding at least ``keys``: the complete one on
    disk, or else (missing, partial, truncated, or without some keys) a new one of exactly
    ``keys``, decoded from the files (:func:`catsdogs.data.pipeline.write_decoded`) and
    synthetic outliers drawn again with ``seed``; written atomically, manifest first.

    Raises:
        DataError: a photo cannot be read any more.
    """
    records, manifest = cache_files(run, size)
    left = remove_partial(run_file(run, CACHE_DIR))
    store, why = PhotoStore.open(records, manifest, size)
    if store is not None and not (missing := store.missing(keys)):
        return store
    why = why if store is None else f"{len(missing):,} photos missing"
    print(f"Cache: writing {records} ({len(keys):,} photos at {size} px; {why}"
          f"{f'; removed {len(left)} partial file(s)' if left else ''})")
    for file in (records, manifest):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file)
    paths = [k for k in keys if not k.startswith(SYNTHETIC_PREFIX)]
    synthetic = sorted(int(k[len(SYNTHETIC_PREFIX):]) for k in keys
                       if k.startswith(SYNTHETIC_PREFIX))
    with RecordWriter(records, size) as writer:
        write_decoded(writer, paths)
        if synthetic:
            drawn = synthetic_outliers(synthetic[-1] + 1, size, seed=seed)
            writer.append(drawn[synthetic])
        write_manifest(manifest, paths + [synthetic_key(i) for i in synthetic])
    store, why = PhotoStore.open(records, manifest, size)
    if store is None:  # just written: only a file changed under our feet gets here
        raise OSError(f"{records}: unusable right after writing it ({why})")
    return store


def disk_photos(cfg: TrainConfig, examples: list[Example], cluster: Cluster | None = None
                ) -> tuple[OnDisk, OnDisk, OnDisk | None, int]:
    """The photos training reads from disk, each in the order the datasets take them; with a
    ``cluster``, this worker's shard of each (:func:`catsdogs.distributed.shard`: a store
    built here decodes only those photos).

    Returns:
        ``(train, val, outliers, n_synthetic)``: the train split at
        :meth:`TrainConfig.cache_size`, the validation split at :attr:`TrainConfig.image_size`,
        the training outliers (the train split of ``other.csv`` then the synthetic ones;
        None without :attr:`TrainConfig.other`) and how many of them are synthetic.

    Raises:
        DataError: a store had to be rebuilt and a photo cannot be read any more.
    """
    size = cfg.cache_size()
    train = shard(select(examples, "train")[0], cluster)
    val = shard(select(examples, "val")[0], cluster)
    outliers: list[str] = []
    synthetic = cfg.other_synthetic if cfg.other else 0
    if cfg.other:
        outliers = shard([e.path for e in load_other_split(run_file(cfg.out, OTHER_SPLITS_FILE))
                          if e.split == "train"] + [synthetic_key(i) for i in range(synthetic)],
                         cluster)
        synthetic = sum(k.startswith(SYNTHETIC_PREFIX) for k in outliers)
    same = cfg.image_size == size
    store = ensure_store(cfg.out, size, train + outliers + (val if same else []), cfg.seed)
    val_store = store if same else ensure_store(cfg.out, cfg.image_size, val, cfg.seed)
    return (store.select(train), val_store.select(val),
            store.select(outliers) if cfg.other else None, synthetic)


def remove_cache(run: str) -> None:
    """Delete the run's disk cache (once ``model.keras`` is saved)."""
    shutil.rmtree(run_file(run, CACHE_DIR), ignore_errors=True)
