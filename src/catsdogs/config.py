"""Run settings as dataclasses, saved as ``config.json`` in the run folder.

A preset is a named set of defaults (``baseline``, ``quick``, ``fast``, ``default``); command-line
options override single fields. ``config.json`` also records the package and library versions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field

from catsdogs import __version__
from catsdogs.errors import RunError
from catsdogs.io import atomic_write_text


@dataclass
class TrainConfig:
    """Every setting of a training run.

    Attributes:
        data: labelled photo folder.
        out: run folder.
        preset: name of the preset the defaults came from.
        model: registry name for :func:`catsdogs.models.build_model`.
        model_kwargs: extra builder options (e.g. ``{"widths": [32, 64]}``).
        image_size: model input side, pixels: the size the saved model classifies at (evaluate,
            predict, serve) and validates at during training.
        train_sizes: progressive resizing: training input sides in pixels, one stage each, the
            epochs split evenly between them in order (``[96, 112]`` over 18 epochs: 9 at 96 px,
            then 9 at 112 px). Empty: train at ``image_size`` throughout. Small early stages
            make early epochs cheaper (fast.ai's DAWNBench recipe, Howard 2018; "progressive
            learning", Tan & Le 2021, EfficientNetV2, arXiv:2104.00298), and training below
            the test size offsets the larger apparent object size that random-resized crops
            cause (Touvron et al. 2019, "Fixing the train-test resolution discrepancy",
            arXiv:1906.06423). Photos are decoded once, at the largest size.
        batch_size: photos per batch.
        epochs: passes over the train split.
        optimizer: ``"adam"`` or ``"adamw"``.
        learning_rate: peak learning rate.
        weight_decay: decoupled weight decay (AdamW only).
        schedule: ``"constant"`` or ``"cosine"`` (linear warm-up then cosine decay to 0).
        warmup_epochs: warm-up length for ``"cosine"``, in epochs.
        label_smoothing: binary cross-entropy label smoothing (Szegedy et al. 2016,
            arXiv:1512.00567).
        augmentation: key of :data:`catsdogs.augment.AUGMENTATIONS`.
        jit_compile: compile the train step with XLA. Off by default: on our 2-core AVX-512
            CPU, TensorFlow's own (oneDNN) kernels trained the ``default`` model about 1.5×
            faster than XLA in bfloat16 (synthetic batches: ~290 vs ~185 photos/s; real epochs
            61–80 s vs 104–147 s; see README "Measured results").
        steps_per_execution: batches per compiled train-function call (Keras ``compile``
            option; "can greatly improve performance on TPUs or small models with a large Python
            overhead", https://keras.io/api/models/model_training_apis/). The same updates as
            one batch per call; measured here at 64 px: epochs about 6–10 % faster with 16 than
            with 1 (README "Measured results"). Callbacks and the progress bar then see every
            16th batch.
        precision: ``"float32"``, ``"mixed_bfloat16"`` (Keras mixed precision: bfloat16 compute,
            float32 variables; Micikevicius et al. 2018, arXiv:1710.03740) or ``"auto"``
            (bfloat16 where the CPU has native bfloat16 instructions, AVX512_BF16 or AMX). The
            saved model always computes in float32.
        limit: at most this many photos per class (after duplicate removal), or None for all.
        seed: seed for the split, the shuffle and weight initialisation.
        val_fraction: fraction of photos in the validation split.
        test_fraction: fraction of photos in the test split.
        threshold: P(dog) at or above which a photo is called a dog.
        tta: test-time augmentation: evaluate, predict and serve average P(dog) over the photo
            and its mirror image (see :class:`catsdogs.predict.Predictor`).
        val_every: validate every this many epochs, and always after the last epoch (Keras
            ``fit(validation_freq=…)``, https://keras.io/api/models/model_training_apis/). The
            best checkpoint is chosen among the validated epochs only. Validation does not change
            the training itself; skipping it saves time: a pass over the 2,498 validation photos
            at 144 px took ~6 s with the ``default`` model on our AVX2-only 2-core CPU and ~1.5 s
            on the AVX-512 + BF16 one (validated epochs in ``history.csv``), which
            ``val_every=2`` halves.
    """

    data: str = ""
    out: str = ""
    preset: str = "default"
    model: str = "resnet"
    model_kwargs: dict = field(default_factory=dict)
    image_size: int = 112
    train_sizes: list[int] = field(default_factory=list)
    batch_size: int = 64
    epochs: int = 19
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    augmentation: str = "crop_flip"
    jit_compile: bool = False
    steps_per_execution: int = 16
    precision: str = "auto"
    limit: int | None = None
    seed: int = 1337
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    threshold: float = 0.5
    tta: bool = False
    val_every: int = 1

    def validation_epochs(self) -> list[int]:
        """1-based epochs after which the validation split is evaluated (see
        :attr:`val_every`): ``val_every=2`` over 5 epochs gives ``[2, 4, 5]``.

        Raises:
            ValueError: ``val_every`` below 1.
        """
        if self.val_every < 1:
            raise ValueError(f"val_every must be at least 1, got {self.val_every}")
        return [e for e in range(1, self.epochs + 1) if e % self.val_every == 0
                or e == self.epochs]

    def train_size(self, epoch: int) -> int:
        """Training input side, pixels, in ``epoch`` (0-based); see :attr:`train_sizes`."""
        sizes = self.train_sizes or [self.image_size]
        return int(sizes[min(len(sizes) - 1, epoch * len(sizes) // max(1, self.epochs))])

    def to_dict(self) -> dict:
        """Settings plus the software versions, as written to ``config.json``."""
        return {**dataclasses.asdict(self), "versions": software_versions()}

    def save(self, run_dir: str) -> None:
        """Write ``config.json`` into ``run_dir`` atomically."""
        atomic_write_text(os.path.join(run_dir, "config.json"),
                          json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, run_dir: str) -> TrainConfig:
        """Read ``config.json`` from a run folder.

        Raises:
            RunError: missing or unreadable file.
        """
        path = os.path.join(run_dir, "config.json")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise RunError(f"{path}: missing; {run_dir} is not a catsdogs run folder") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{path}: unreadable ({exc})") from None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


PRESETS: dict[str, dict] = {
    # The classic tutorial: 64×64, 2 conv layers, Adam(1e-3), batch 32, 25 epochs, flip/zoom/shear.
    "baseline": dict(model="baseline", image_size=64, batch_size=32, epochs=25, optimizer="adam",
                     learning_rate=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0.0,
                     augmentation="tutorial", precision="float32"),
    # Whole `train` (scan to report) in ≤ 3 minutes on the full PetImages folder, 2 CPU cores.
    # It scans and deduplicates the whole folder, then trains on a seeded 2,500-photo-per-class
    # subset (--limit overrides), since decoding and 3 epochs of all 20k photos take longer.
    "quick": dict(model="resnet", model_kwargs={"blocks": [1, 1, 1, 1]}, image_size=64,
                  batch_size=128, epochs=5, learning_rate=3e-3, warmup_epochs=0.3, limit=2500),
    # Our from-scratch recipe for the whole `train` in ≤ 30 minutes on 2 CPU cores. Chosen on
    # the validation split (2,498 photos, with test-time flips): 19 epochs at 112 px classified
    # at 112 px gave 92.2 %, the same model classified at 128/144/160 px 93.0/93.8/92.5 % (the
    # FixRes effect); 11 epochs at 96 px then 11 at 112 px, classified at 144 px, 93.8 % in
    # 4 % less time. Test-time flips add ~0.1–0.7 points. On the AVX2-only CI machine (float32)
    # that 22-epoch recipe scored 93.51 % (flips 93.88 %) in ~30 minutes; cheaper variants, all
    # dropped: 80 → 96 → 112 px 92.75 % (93.43 %), 20 epochs 93.39 % (93.51 %), 21 epochs
    # 93.31 % (93.43 %). On the AVX-512 + BF16 machine (2026-11-28, bfloat16) it took only
    # 11.5 minutes and scored 93.63 % on val, 93.84 % on test, so the spare time went into
    # epochs and resolution: 36 epochs at 96 → 112 px (18 + 18), classified at 144 px, 94.40 %
    # (flips 94.64 %) in 18.4 min; 36 epochs at 96 → 112 → 128 px (12 + 12 + 12) 94.92 % at
    # 160 px (flips 95.40 %; at 144 px 94.68/95.04 %, at 176 px 94.44/94.56 %) in 20.7 min.
    # Shipped: the latter, classified at 160 px with flips. An AVX2-only CPU needs about 2.6×
    # as long (the 22-epoch recipe: 30.5 vs 11.5 min; README "Measured results").
    "default": dict(model="resnet", image_size=160, train_sizes=[96, 112, 128], batch_size=64,
                    epochs=36, tta=True, val_every=2),
    # The same net, smaller and shorter, aimed at an 8-minute `train` on 2 CPU cores. Chosen on
    # the validation split (2,498 photos): 14 epochs at 64 → 80 → 96 px with the 0.4–1 crop gave
    # 90.6 % classified at 112 px (89.9 % at 96); with the milder 0.7–1 crop (`light_crop_flip`:
    # the model was underfitting) 91.8 % at 96 px (91.1 % at 112, 90.3 % at 128; flips 91.5 %).
    # 14 epochs missed 8 minutes (8.9–10.5 min, README "Measured results"), so: 13 epochs 91.2 %
    # (flips 91.1 %), 12 epochs 90.4 % and with test-time flips 91.15 %, 12 epochs without dropout
    # and weight decay 0.02 90.6 % (flips 90.4 %), 10 epochs 89.3 %, 12 epochs at 64 → 80 px only
    # 89.1 %; shipped then: 12 epochs with flips.
    # On the AVX2-only CI machine (float32, oneDNN) 12 epochs took 9.3 min, so 10-epoch variants,
    # val at 96 px / with flips: as is 89.2/89.8 %, batch 32 90.3/90.3 % (+40 s), crop area
    # 0.85–1 89.8/90.2 %, no dropout + weight decay 0.01 89.4/89.6 %, 64 → 80 px only 88.0/88.4 %,
    # peak learning rate 4e-3 89.8/90.7 % (fit 393 s). That recipe still took 8.2–8.8 min in
    # two benches; with 9 epochs it scored 90.1/90.6 %, the same within noise for 10 % less
    # compute. Shipped: 9 epochs, lr 4e-3, flips. Both presets validate every other epoch
    # (and after the last): no training step changes, the best checkpoint is picked among the
    # validated epochs, and `default` saves ~1 minute.
    "fast": dict(model="resnet", image_size=96, train_sizes=[64, 80, 96], batch_size=64,
                 epochs=9, learning_rate=4e-3, augmentation="light_crop_flip", tta=True,
                 val_every=2),
}
"""Preset name → overrides of :class:`TrainConfig` defaults."""


def make_config(preset: str = "default", **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus overrides (``None`` overrides are ignored).

    Raises:
        ValueError: unknown preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(preset=preset, **values)


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists native bfloat16 instructions (``avx512_bf16``/``amx_bf16``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """``"auto"`` → ``"mixed_bfloat16"`` on CPUs with native bfloat16, else ``"float32"``."""
    if precision == "auto":
        return "mixed_bfloat16" if cpu_has_bf16() else "float32"
    if precision not in ("float32", "mixed_bfloat16"):
        raise ValueError(f"unknown precision {precision!r}")
    return precision


def software_versions() -> dict[str, str]:
    """Versions of Python, catsdogs and the main libraries, plus ``TF_ENABLE_ONEDNN_OPTS`` (which
    kernels TensorFlow ran; see :data:`catsdogs.ONEDNN_DEFAULT`)."""
    import keras
    import matplotlib
    import numpy
    import PIL
    import sklearn
    import tensorflow as tf

    return {"catsdogs": __version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "pillow": PIL.__version__,
            "matplotlib": matplotlib.__version__, "platform": platform.platform(),
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")}
