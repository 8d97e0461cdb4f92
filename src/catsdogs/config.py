"""Run settings as dataclasses, saved as ``config.json`` in the run folder.

:class:`TrainConfig` holds every setting of a training run; its defaults *are* the ``default``
preset. A preset (:data:`PRESETS`) is a named set of overrides of those defaults; command-line
options and keyword arguments of :func:`catsdogs.train` override single fields.
:class:`InferenceSettings` (threshold, test-time flips, engine) is saved with the run and may be
overridden per call by ``predict``, ``evaluate`` and ``serve``.

A field with ``metadata["help"]`` gets its own ``catsdogs train --flag`` (see
:func:`cli_fields`); every field can be set with ``--set name=value`` (:func:`parse_setting`).
So a new setting is one line here. No TensorFlow import: the command line reads this module.
How the preset values were chosen, with the measurements: docs/recipes.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from catsdogs.errors import ConfigError, RunError
from catsdogs.runfolder import CONFIG_FILE, EXPORT_FILES, run_file, write_json

CACHE_MODES = ("auto", "memory", "disk")
"""Where training keeps its decoded photos (:attr:`TrainConfig.cache`)."""

ENGINES = ("auto", "keras", *EXPORT_FILES)
"""Inference engines (``--engine``). ``auto`` takes an up-to-date float32 export of the run
(LiteRT first, then ONNX) when there is one, else ``model.keras``; never a quantized one."""


@dataclass
class InferenceSettings:
    """How a trained model's output becomes an answer; saved in ``config.json`` under
    ``"inference"`` and overridable per call (``--threshold``, ``--tta/--no-tta``,
    ``--engine``).

    Attributes:
        threshold: P(dog) at or above which a photo is called a dog, 0–1.
        tta: test-time augmentation: P(dog) is the mean over the photo and its mirror image
            (Krizhevsky et al. 2012, §4.1; fastai's ``tta``); two model passes per photo, in
            one call.
        engine: one of :data:`ENGINES`.
        ood_threshold: OOD score (:func:`catsdogs.ood.ood_score`) above which a photo is called
            ``other``, "neither a cat nor a dog"; chosen on the validation split at the end of
            training (:data:`catsdogs.ood.KEEP_PETS` of the pets kept); None: never ``other``
            (run folders from before it existed).

    Raises:
        ConfigError: threshold outside 0–1 or an unknown engine.
    """

    threshold: float = 0.5
    tta: bool = False
    engine: str = "auto"
    ood_threshold: float | None = None

    def __post_init__(self):
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.ood_threshold is not None and not 0.0 <= float(self.ood_threshold) <= 1.0:
            raise ConfigError(f"ood_threshold must be between 0 and 1, got {self.ood_threshold}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose one of {list(ENGINES)}")

    def with_overrides(self, **overrides) -> InferenceSettings:
        """A copy with the given fields replaced (``None`` values are ignored; :data:`NONE`
        sets a field to ``None``).

        Raises:
            ConfigError: an unknown field or a bad value.
        """
        names = {f.name for f in dataclasses.fields(self)}
        if unknown := sorted(set(overrides) - names):
            raise ConfigError(f"unknown inference setting(s) {unknown}; choose from "
                              f"{sorted(names)}")
        return dataclasses.replace(self, **_given(overrides))


class NoneSetting:
    """The value of ``--set KEY=none`` for a setting that may be ``None``: unlike a ``None``
    override, which means "not given" (the preset's value stays), it sets the field to
    ``None`` (``--set limit=none`` trains on every photo even with ``quick``'s limit)."""

    def __repr__(self) -> str:
        return "none"


NONE = NoneSetting()
"""The one :class:`NoneSetting` value (:func:`parse_setting` returns it, :func:`make_config` and
:meth:`InferenceSettings.with_overrides` turn it into ``None``)."""


RECIPE_SETTINGS = ("model", "model_kwargs", "image_size", "train_sizes", "batch_size",
                   "optimizer", "learning_rate", "weight_decay", "schedule", "warmup_epochs",
                   "label_smoothing", "augmentation")
"""The settings that make a preset's recipe: a short-budget switch
(:meth:`TrainConfig.short_budget_config`) takes these from :attr:`TrainConfig.short_budget_preset`,
and :func:`make_config` turns the switch off when any of them is given."""


def _given(overrides: dict) -> dict:
    """The overrides that were given: ``None`` left out, :data:`NONE` turned into ``None``."""
    return {k: None if v is NONE else v for k, v in overrides.items() if v is not None}


def _flag(default, help_text: str, **kwargs):
    """A dataclass field with its own ``catsdogs train`` option (``--name-with-dashes``)."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help_text}, **kwargs)
    return field(default=default, metadata={"help": help_text}, **kwargs)


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the ``default`` preset.

    Attributes:
        data: labelled photo folder.
        out: run folder.
        preset: name of the preset the defaults came from.
        model: registry name for :func:`catsdogs.models.build_model`.
        model_kwargs: extra builder options (e.g. ``{"widths": [32, 64]}``).
        weights: initial weights of a Keras Applications backbone
            (:data:`catsdogs.backbones.BACKBONES`): ``"none"`` (from scratch), ``"imagenet"``
            (Keras' cache first; downloaded only when Keras' server answers) or the path of a
            ``.h5`` / ``.weights.h5`` file of the backbone (no top). With weights, the
            backbone's batch-norm layers stay in inference mode
            (https://keras.io/guides/transfer_learning/).
        head_epochs: transfer learning, stage 1: the first ``head_epochs`` of :attr:`epochs`
            train only the new head (backbone frozen) at :attr:`learning_rate`, constant; then
            stage 2 fine-tunes the top :attr:`fine_tune_fraction` of the backbone's layers at
            :attr:`learning_rate` × :attr:`fine_tune_lr_factor` on :attr:`schedule` (the
            two-stage recipe of https://keras.io/guides/transfer_learning/). 0: one stage,
            every layer trained from the start.
        fine_tune_fraction: share of the backbone's layers, counted from the top, that stage 2
            trains (batch-norm layers stay frozen).
        fine_tune_lr_factor: stage 2's peak learning rate as a multiple of stage 1's.
        image_size: model input side, pixels: the size the saved model classifies at (evaluate,
            predict, serve) and validates at during training.
        train_sizes: progressive resizing: training input sides in pixels, one stage each, the
            epochs split evenly between them in order (``[96, 112]`` over 18 epochs: 9 at 96 px,
            then 9 at 112 px). Empty: train at ``image_size`` throughout. Small early stages
            make early epochs cheaper (fast.ai's DAWNBench recipe, Howard 2018; "progressive
            learning", Tan & Le 2021, arXiv:2104.00298), and training below the test size
            offsets the larger apparent object size that random-resized crops cause (Touvron et
            al. 2019, "Fixing the train-test resolution discrepancy", arXiv:1906.06423). Photos
            are decoded once, at the largest size.
        batch_size: photos per batch.
        epochs: passes over the train split, when :attr:`time_budget` is off.
        time_budget: train to a time budget, minutes: the whole ``train`` command (scan to
            report) is planned to end within it, the number of optimizer steps chosen from the
            throughput measured at the start of the run and re-planned while training
            (:mod:`catsdogs.budget`); :attr:`epochs` is then ignored. None or 0: train exactly
            :attr:`epochs` epochs (reproducible). Giving ``epochs`` without ``time_budget`` to
            :func:`make_config` turns the budget off.
        optimizer: ``"adam"`` or ``"adamw"``.
        learning_rate: peak learning rate.
        weight_decay: decoupled weight decay (AdamW only).
        schedule: ``"constant"`` or ``"cosine"`` (linear warm-up then cosine decay to 0).
        warmup_epochs: warm-up length for ``"cosine"``, in epochs.
        label_smoothing: binary cross-entropy label smoothing (Szegedy et al. 2016,
            arXiv:1512.00567).
        augmentation: key of :data:`catsdogs.augment.AUGMENTATIONS`.
        jit_compile: compile the train step with XLA. Off: TensorFlow's oneDNN kernels trained
            our models faster than XLA on CPU (docs/recipes.md).
        steps_per_execution: batches per compiled train-function call (Keras ``compile``
            option, https://keras.io/api/models/model_training_apis/): the same updates with
            less Python overhead per batch; callbacks and the progress bar then see every 16th
            batch.
        precision: ``"float32"``, ``"mixed_bfloat16"`` (Keras mixed precision: bfloat16 compute,
            float32 variables; Micikevicius et al. 2018, arXiv:1710.03740) or ``"auto"``: on a
            CPU with native bfloat16 instructions (AVX512_BF16 or AMX), a new run times a
            training step in both and trains in the faster (several workers: bfloat16 by
            the CPU flags, untimed; :func:`catsdogs.system.choose_precision`), else float32.
            A run saves the precision it resolved to; the saved model always computes in
            float32.
        precision_choice: not a setting: how a new run resolved :attr:`precision`, recorded
            when it starts (``precision``, ``reason``, ``size``, ``step_seconds``,
            ``batch_size``: :class:`catsdogs.system.PrecisionChoice`); a resumed run keeps it.
        cache: where training keeps its decoded, resized photos (:data:`CACHE_MODES`):
            ``"memory"`` (uint8 arrays in RAM: fastest, but the photos must fit), ``"disk"``
            (files of fixed-size uint8 records in ``RUN/cache/``, read at random with
            ``os.pread`` in the same shuffled order as from memory; memory stays flat however
            many photos there are, :mod:`catsdogs.data.records`) or ``"auto"`` (memory when
            the estimated bytes fit :attr:`cache_memory_gb`, else disk; the choice, its reason
            and the figures go into ``config.json`` as ``cache_choice``). Either way training
            sees the same photos in the same order (docs/recipes.md).
        cache_memory_gb: the most decoded photos, in GiB (2³⁰ bytes), that ``cache="auto"``
            keeps in memory. None: a fifth of the memory this process may still use
            (:func:`catsdogs.system.available_memory_bytes`), because the in-memory path's
            peak holds them about four times over (:data:`catsdogs.cache.MEMORY_FRACTION`).
        cache_choice: not a setting: what training chose for :attr:`cache`, recorded when a
            run starts (``mode``: ``"memory"`` or ``"disk"``, ``reason``, ``photos``,
            ``estimated_bytes``, ``limit_bytes``; :class:`catsdogs.cache.CacheChoice`); a
            resumed run keeps its ``mode``.
        limit: at most this many photos per class (after duplicate removal), or None for all.
        seed: seed for the split, the shuffle and weight initialisation.
        val_fraction: fraction of photos in the validation split.
        test_fraction: fraction of photos in the test split.
        val_every: validate every this many epochs, and always after the last epoch (Keras
            ``fit(validation_freq=…)``). The best checkpoint is chosen among the validated
            epochs only; skipping validation changes no training step and saves its time.
        other: a folder of non-pet photos (sub-folders by kind) to train a pet head with, so
            the model can answer "neither a cat nor a dog" (:mod:`catsdogs.ood`); empty: none
            (the max-softmax baseline answers instead).
        other_holdout: the kind of other photo kept out of training to measure an unseen kind:
            ``"auto"`` (the last kind in sorted order), a kind such as ``"flowers/tulips"``, or
            ``"none"``.
        other_synthetic: synthetic outliers (:mod:`catsdogs.data.outliers`) added to the
            training outliers when ``other`` is set.
        other_weight: weight of the outliers' P(dog) = 0.5 (outlier exposure) term of the loss
            (λ = 0.5 in Hendrycks et al. 2019, arXiv:1812.04606, §4.2); see
            :class:`catsdogs.training.DogAndPetLoss`.
        inference: threshold, test-time flips and engine used by evaluate, predict and serve.
        short_budget_preset: with a time budget: the preset whose recipe
            (:data:`RECIPE_SETTINGS`: sizes, learning rate, augmentation) the run trains with
            instead when its plan affords fewer than :attr:`short_budget_epochs` epochs at its
            own sizes (:meth:`short_budget_config`); ``""`` (``--set short_budget_preset=none``):
            never. Measured reason (docs/recipes.md): ``fast``'s recipe scored higher on the
            validation split than ``default``'s at every budget tried up to 20 minutes (by 9.5
            points at 5 minutes, 0.7–1.0 at 20), where ``default``'s plan had 3.3 to 18.6
            epochs; at 30 minutes (22 planned) ``default``'s scored higher.
        short_budget_epochs: the planned epochs below which the switch happens.
        budget_recipe: not a setting: the preset whose recipe this run switched to (``""``:
            none), recorded in ``config.json`` so a resumed run keeps it.
        own_recipe_epochs: not a setting: the epochs the plan at the preset's own sizes
            afforded, when a time-budget run chose between recipes (the switch above); None:
            no choice was made.
        cache_pixels: side, pixels, at which training holds its photos, when not the largest
            training size (:meth:`cache_size`): a run that switched recipe keeps the photos it
            had already decoded.
    """

    data: str = ""
    out: str = ""
    preset: str = "default"
    model: str = _flag("resnet", "model registry name (`catsdogs models` lists them)")
    model_kwargs: dict = field(default_factory=dict)
    weights: str = _flag("none", "backbone weights: none (from scratch), imagenet (Keras' cache, "
                                 "downloaded if reachable) or PATH of a .h5/.weights.h5 file")
    head_epochs: int = _flag(0, "transfer learning: train only the new head for the first N "
                                "epochs (backbone frozen), then fine-tune")
    fine_tune_fraction: float = 1.0
    fine_tune_lr_factor: float = 0.1
    image_size: int = _flag(160, "size the model classifies at, pixels (alone, it also trains "
                                 "at that size)")
    train_sizes: list[int] = _flag(lambda: [96, 112, 128],
                                   "progressive resizing: training sizes, the epochs split "
                                   "evenly between them in order (e.g. 96,112); 'none' trains "
                                   "at --image-size")
    batch_size: int = _flag(64, "photos per batch")
    epochs: int = _flag(36, "passes over the train split; turns --time-budget off unless "
                            "that is given too")
    time_budget: float | None = _flag(30.0, "train to a time budget, MINUTES for the whole "
                                            "command, scan to report (default: the preset's); "
                                            "'none': exactly --epochs epochs")
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
    precision_choice: dict = field(default_factory=dict)
    cache: str = _flag("auto", "where the decoded photos live while training: memory, disk "
                               "(RUN/cache, for photo folders larger than memory) or auto "
                               "(memory when they fit in --cache-memory-gb)")
    cache_memory_gb: float | None = _flag(None, "--cache auto keeps at most this many GiB of "
                                                "decoded photos in memory; unset, a fifth of "
                                                "the memory available")
    cache_choice: dict = field(default_factory=dict)
    limit: int | None = _flag(None, "use at most N photos per class (demos, tests)")
    seed: int = _flag(1337, "random seed for the split, shuffle and initialisation")
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    val_every: int = _flag(2, "validate every N epochs and after the last")
    other: str = _flag("", "folder of non-pet photos to train with as outliers, so the model "
                           "can answer 'other' (neither a cat nor a dog)")
    other_holdout: str = "auto"
    other_synthetic: int = 2000
    other_weight: float = 0.5
    inference: InferenceSettings = field(default_factory=lambda: InferenceSettings(tta=True))
    short_budget_preset: str = "fast"
    short_budget_epochs: float = 20.0
    budget_recipe: str = ""
    own_recipe_epochs: float | None = None
    cache_pixels: int | None = None

    def __post_init__(self):
        if isinstance(self.inference, dict):
            self.inference = InferenceSettings(**self.inference)
        self.short_budget_preset = ("" if self.short_budget_preset.lower() == "none"
                                    else self.short_budget_preset)
        if self.short_budget_preset and self.short_budget_preset not in PRESETS:
            raise ConfigError(f"unknown short_budget_preset {self.short_budget_preset!r}; "
                              f"choose one of {sorted(PRESETS)} or none")
        if self.time_budget is not None and self.time_budget < 0:
            raise ConfigError(f"time_budget must be positive minutes, got {self.time_budget}")
        self.time_budget = self.time_budget or None
        if not 0 <= self.head_epochs < max(1, self.epochs):
            raise ConfigError(f"head_epochs must be 0 or fewer than epochs ({self.epochs}), "
                              f"got {self.head_epochs}")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"unknown cache {self.cache!r}; choose one of {list(CACHE_MODES)}")
        if self.cache_memory_gb is not None and not self.cache_memory_gb > 0:
            raise ConfigError(f"cache_memory_gb must be positive, got {self.cache_memory_gb}")
        if not 0.0 < self.fine_tune_fraction <= 1.0:
            raise ConfigError(f"fine_tune_fraction must be in (0, 1], got "
                              f"{self.fine_tune_fraction}")

    @property
    def budget_seconds(self) -> float | None:
        """:attr:`time_budget` in seconds, or None for a fixed number of epochs."""
        return None if self.time_budget is None else 60.0 * self.time_budget

    def validation_epochs(self) -> list[int]:
        """1-based epochs after which the validation split is evaluated (see
        :attr:`val_every`): ``val_every=2`` over 5 epochs gives ``[2, 4, 5]``.

        Raises:
            ConfigError: ``val_every`` below 1.
        """
        if self.val_every < 1:
            raise ConfigError(f"val_every must be at least 1, got {self.val_every}")
        return [e for e in range(1, self.epochs + 1) if e % self.val_every == 0
                or e == self.epochs]

    def train_size(self, epoch: int) -> int:
        """Training input side, pixels, in ``epoch`` (0-based); see :attr:`train_sizes`."""
        sizes = self.train_sizes or [self.image_size]
        return int(sizes[min(len(sizes) - 1, epoch * len(sizes) // max(1, self.epochs))])

    def cache_size(self) -> int:
        """Side, pixels, at which training holds its photos (in memory or on disk,
        :attr:`cache`): :attr:`cache_pixels` when set, else the largest training size
        (progressive resizing crops and resizes down from it)."""
        return self.cache_pixels or max(self.train_sizes or [self.image_size])

    def short_budget_config(self) -> TrainConfig:
        """This run with the recipe (:data:`RECIPE_SETTINGS`) of :attr:`short_budget_preset`,
        for a time budget too short for its own sizes: :attr:`budget_recipe` names that
        preset, the switch is off, and the photos stay at :meth:`cache_size`.

        Raises:
            ConfigError: no :attr:`short_budget_preset`.
        """
        if not self.short_budget_preset:
            raise ConfigError("this run has no short_budget_preset to switch to")
        recipe = {k: v for k, v in PRESETS[self.short_budget_preset].items()
                  if k in RECIPE_SETTINGS}
        return dataclasses.replace(self, **recipe, budget_recipe=self.short_budget_preset,
                                   short_budget_preset="", cache_pixels=self.cache_size())

    def to_dict(self, versions: dict | None = None) -> dict:
        """Settings (plus ``versions`` when given), as written to ``config.json``."""
        out = dataclasses.asdict(self)
        return {**out, "versions": versions} if versions is not None else out

    def save(self, run_dir: str, versions: dict | None = None) -> None:
        """Write ``config.json`` into ``run_dir`` atomically (with the software ``versions``
        from :func:`catsdogs.system.software_versions`, when given)."""
        write_json(run_file(run_dir, CONFIG_FILE), self.to_dict(versions))

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        """A config from ``config.json`` contents; unknown keys are ignored. Older run folders
        kept ``threshold`` and ``tta`` at the top level: they become :attr:`inference`.

        Raises:
            ConfigError: a bad inference value.
        """
        raw = dict(raw)
        legacy = {k: raw.pop(k) for k in ("threshold", "tta") if k in raw}
        if "inference" not in raw:
            raw["inference"] = InferenceSettings(**legacy)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def load(cls, run_dir: str) -> TrainConfig:
        """Read ``config.json`` from a run folder.

        Raises:
            RunError: missing or unreadable file, or bad settings in it.
        """
        file = run_file(run_dir, CONFIG_FILE)
        try:
            with open(file, encoding="utf-8", errors="surrogateescape") as fh:
                raw = json.load(fh)
            return cls.from_dict(raw)
        except FileNotFoundError:
            raise RunError(f"{file}: missing; {run_dir} is not a catsdogs run folder") from None
        except (OSError, json.JSONDecodeError, TypeError, AttributeError, ConfigError) as exc:
            raise RunError(f"{file}: unreadable ({exc})") from None


PRESETS: dict[str, dict] = {
    # The classic tutorial: 64×64, 2 conv layers, Adam(1e-3), batch 32, 25 epochs, flip/zoom/shear.
    "baseline": dict(model="baseline", image_size=64, train_sizes=[], batch_size=32, epochs=25,
                     optimizer="adam", learning_rate=1e-3, weight_decay=0.0, schedule="constant",
                     warmup_epochs=0.0, augmentation="tutorial", precision="float32",
                     val_every=1, time_budget=None, inference=InferenceSettings(),
                     short_budget_preset=""),
    # A demo: the whole `train` in a few minutes on the full PetImages folder, on a seeded
    # 2,500-photo-per-class subset (--limit overrides). Not a good model.
    "quick": dict(model_kwargs={"blocks": [1, 1, 1, 1]}, image_size=64, train_sizes=[],
                  batch_size=128, epochs=5, learning_rate=3e-3, warmup_epochs=0.3, limit=2500,
                  val_every=1, time_budget=None, inference=InferenceSettings(),
                  short_budget_preset=""),
    # The same widths and depths without batch norm, on smaller photos and shorter: its steps
    # are cheaper and it learns faster in the first epochs; a short run underfits, so a milder
    # crop and a higher peak learning rate. Batches of 128: at 64-96 px a step has a large
    # fixed cost, which the larger batch spreads over more photos (docs/recipes.md).
    "fast": dict(model="resnet", model_kwargs={"norm": "nf"}, image_size=96,
                 train_sizes=[64, 80, 96], batch_size=128, epochs=9, learning_rate=6e-3,
                 augmentation="light_crop_flip", time_budget=5.0, short_budget_preset=""),
    # Two-stage transfer learning from ImageNet (https://keras.io/guides/transfer_learning/):
    # 2 epochs of the new head on a frozen backbone, then 6 of fine-tuning at a tenth of the
    # learning rate. Fixed epochs: the two stages are not planned to a time budget.
    "transfer": dict(model="mobilenet_v3_large", weights="imagenet", image_size=160,
                     train_sizes=[], epochs=8, head_epochs=2, learning_rate=1e-3,
                     weight_decay=0.01, warmup_epochs=0.5, augmentation="light_crop_flip",
                     val_every=1, time_budget=None, short_budget_preset=""),
    # Our from-scratch recipe, to a 30-minute budget: TrainConfig's own defaults; a budget that
    # affords fewer than 20 epochs at its sizes trains with fast's recipe (docs/recipes.md).
    "default": {},
}
"""Preset name → overrides of :class:`TrainConfig` defaults."""


def make_config(preset: str = "default", **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus overrides (``None`` overrides are ignored;
    :data:`NONE`, from ``--set KEY=none``, sets a field to ``None``).

    ``threshold`` and ``tta`` may be given as overrides too: they go into :attr:`inference`.
    ``epochs`` without ``time_budget`` means a fixed number of epochs: the budget is off.

    Raises:
        ConfigError: unknown preset or setting.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    inference = {k: overrides.pop(k) for k in ("threshold", "tta", "engine", "ood_threshold")
                 if overrides.get(k) is not None}
    given = _given(overrides)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown := sorted(set(given) - names):
        raise ConfigError(f"unknown setting(s) {unknown}; see catsdogs train --help")
    if "epochs" in given and "time_budget" not in given:
        given["time_budget"] = None
    values = {**PRESETS[preset], **given}
    if set(given) & set(RECIPE_SETTINGS) and "short_budget_preset" not in given:
        values["short_budget_preset"] = ""  # a recipe the user chose is not switched
    default_model = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "model")
    if (values["model"] if "model" in values else default_model) != \
            PRESETS[preset].get("model", default_model) and "model_kwargs" not in given:
        values["model_kwargs"] = {}  # the preset's builder options are for its own model
    cfg = TrainConfig(preset=preset, **values)
    cfg.inference = cfg.inference.with_overrides(**inference)
    return cfg


def cli_fields() -> list[dataclasses.Field]:
    """The :class:`TrainConfig` fields that have their own ``catsdogs train`` option."""
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


def parse_setting(name: str, text: str):
    """Parse the command-line text of setting ``name`` by the type of its field.

    ``int``, ``float`` and ``str`` as usual; ``bool`` from true/false/yes/no/1/0; ``list[int]``
    from ``96,112`` (``none`` = empty); ``int | None`` from a number or ``none`` (:data:`NONE`);
    ``dict`` from JSON; ``inference.threshold`` / ``threshold`` and ``tta`` reach
    :class:`InferenceSettings`.

    Raises:
        ConfigError: unknown setting or a value that does not parse.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    fields.update({f.name: f for f in dataclasses.fields(InferenceSettings)})
    key = name.removeprefix("inference.")
    if key not in fields or key == "inference":
        raise ConfigError(f"unknown setting {name!r}; choose from {sorted(fields)}")
    kind = str(fields[key].type).replace(" ", "")
    value = text.strip()
    try:
        if kind == "bool":
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError("expected true or false")
            return value.lower() in ("true", "yes", "1")
        if value.lower() == "none" and ("None" in kind or kind.startswith("list")):
            return [] if kind.startswith("list") else NONE
        if kind.startswith("list[int]"):
            return [int(t) for t in value.split(",")]
        if kind == "dict":
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError("expected a JSON object")
            return parsed
        number = {"int": int, "int|None": int, "float": float, "float|None": float}
        return number.get(kind, str)(value)
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r}: {exc}") from None

