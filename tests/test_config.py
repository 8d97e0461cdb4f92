"""Settings: TrainConfig's defaults are the ``default`` preset, presets and overrides, the
inference settings (and old config.json files that kept them at the top level), the schedules
derived from a config, and parsing of ``--set KEY=VALUE``."""

from __future__ import annotations

import dataclasses
import json

import pytest

from catsdogs.config import (
    ENGINES,
    NONE,
    PRESETS,
    InferenceSettings,
    TrainConfig,
    cli_fields,
    make_config,
    parse_setting,
)
from catsdogs.errors import ConfigError, RunError


def _without_preset(cfg: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "preset"}


def test_train_config_defaults_are_the_default_preset():
    assert PRESETS["default"] == {}
    assert _without_preset(TrainConfig()) == _without_preset(make_config("default"))
    assert make_config("default").preset == "default"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_changes_only_the_fields_it_names(preset):
    base, cfg = _without_preset(TrainConfig()), _without_preset(make_config(preset))
    changed = {k for k in base if base[k] != cfg[k]}
    assert changed <= set(PRESETS[preset])
    assert make_config(preset).preset == preset


@pytest.mark.parametrize("preset, tta", [("fast", True), ("default", True), ("quick", False),
                                         ("baseline", False)])
def test_inference_settings_of_each_preset(preset, tta):
    assert make_config(preset).inference == InferenceSettings(threshold=0.5, tta=tta,
                                                              engine="auto")


def test_threshold_and_tta_overrides_go_into_the_inference_settings():
    cfg = make_config("quick", threshold=0.7, tta=True, epochs=None)
    assert cfg.inference.threshold == 0.7 and cfg.inference.tta is True
    assert cfg.epochs == PRESETS["quick"]["epochs"]  # a None override is ignored
    assert not hasattr(cfg, "threshold") and not hasattr(cfg, "tta")
    with pytest.raises(ConfigError, match="threshold"):
        make_config("quick", threshold=1.5)


def test_make_config_rejects_unknown_settings_and_presets():
    with pytest.raises(ConfigError, match="unknown setting.*learning_rte"):
        make_config("default", learning_rte=0.1)
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("huge")


def test_inference_settings_reject_bad_values():
    with pytest.raises(ConfigError, match="threshold must be between 0 and 1"):
        InferenceSettings(threshold=1.5)
    with pytest.raises(ConfigError, match="unknown engine"):
        InferenceSettings(engine="gpu")
    with pytest.raises(ConfigError, match="ood_threshold"):
        InferenceSettings(ood_threshold=-0.1)
    assert "gpu" not in ENGINES and {"auto", "keras", "onnx", "tflite"} <= set(ENGINES)
    settings = InferenceSettings(threshold=0.4)
    assert settings.with_overrides(threshold=None, tta=True) == InferenceSettings(0.4, True)
    with pytest.raises(ConfigError, match="unknown inference setting"):
        settings.with_overrides(colour="red")


def test_cache_settings_are_checked():
    assert make_config("default").cache == "auto" and make_config("default").cache_memory_gb is None
    assert make_config("quick", cache="disk", cache_memory_gb=0.5).cache_memory_gb == 0.5
    with pytest.raises(ConfigError, match="unknown cache 'ram'; choose one of"):
        make_config("quick", cache="ram")
    with pytest.raises(ConfigError, match="cache_memory_gb must be positive"):
        make_config("quick", cache_memory_gb=0)


def test_config_json_round_trip(tmp_path):
    cfg = make_config("fast", data="photos", out=str(tmp_path), threshold=0.3, limit=10,
                      model_kwargs={"widths": [16, 32]})
    cfg.save(str(tmp_path), versions={"catsdogs": "x"})
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["inference"] == {"threshold": 0.3, "tta": True, "engine": "auto",
                                "ood_threshold": None}
    assert raw["versions"] == {"catsdogs": "x"}
    assert TrainConfig.load(str(tmp_path)) == cfg


def test_a_legacy_config_json_loads_its_inference_settings(tmp_path):
    """Run folders from before the inference settings kept threshold and tta at the top."""
    raw = dataclasses.asdict(make_config("quick", out=str(tmp_path)))
    del raw["inference"]
    raw.update(threshold=0.7, tta=True, some_old_setting=1)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = TrainConfig.load(str(tmp_path))
    assert cfg.inference == InferenceSettings(threshold=0.7, tta=True, engine="auto")
    assert cfg.preset == "quick" and cfg.image_size == PRESETS["quick"]["image_size"]


def test_a_bad_config_json_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="missing"):
        TrainConfig.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="unreadable"):
        TrainConfig.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"threshold": 2.0}))
    with pytest.raises(RunError, match="threshold"):
        TrainConfig.load(str(tmp_path))


@pytest.mark.parametrize("name, text, value", [
    ("epochs", "12", 12),
    ("learning_rate", "0.003", 0.003),
    ("weight_decay", "1e-4", 1e-4),
    ("jit_compile", "true", True),
    ("jit_compile", "No", False),
    ("tta", "false", False),
    ("inference.tta", "1", True),
    ("threshold", "0.6", 0.6),
    ("inference.threshold", " 0.25 ", 0.25),
    ("train_sizes", "96,112", [96, 112]),
    ("train_sizes", "none", []),
    ("limit", "none", NONE),
    ("limit", "300", 300),
    ("model_kwargs", '{"widths": [32, 64]}', {"widths": [32, 64]}),
    ("augmentation", "crop_flip", "crop_flip"),
    ("engine", "onnx", "onnx"),
    ("cache", "disk", "disk"),
    ("cache_memory_gb", "2.5", 2.5),
    ("cache_memory_gb", "none", NONE),
])
def test_parse_setting_by_the_type_of_its_field(name, text, value):
    parsed = parse_setting(name, text)
    assert parsed == value and type(parsed) is type(value)


def test_set_none_lifts_a_preset_value_that_a_none_override_keeps():
    assert make_config("quick").limit == 2500
    assert make_config("quick", limit=None).limit == 2500  # None: not given
    assert make_config("quick", limit=parse_setting("limit", "none")).limit is None
    cfg = make_config("fast", cache_memory_gb=NONE, ood_threshold=NONE, threshold=0.6)
    assert cfg.cache_memory_gb is None and cfg.inference.ood_threshold is None
    assert cfg.inference.threshold == 0.6
    assert make_config("fast", ood_threshold=0.9).inference.ood_threshold == 0.9


@pytest.mark.parametrize("name, text, match", [
    ("nonsense", "1", "unknown setting 'nonsense'"),
    ("inference", "{}", "unknown setting"),
    ("epochs", "many", "epochs='many'"),
    ("learning_rate", "fast", "learning_rate"),
    ("jit_compile", "maybe", "expected true or false"),
    ("train_sizes", "96,big", "train_sizes"),
    ("limit", "lots", "limit"),
    ("model_kwargs", "[1, 2]", "expected a JSON object"),
    ("model_kwargs", "{widths: 1}", "model_kwargs"),
])
def test_parse_setting_rejects_unknown_keys_and_bad_values(name, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_setting(name, text)


def test_cli_fields_are_the_settings_with_their_own_flag():
    names = [f.name for f in cli_fields()]
    assert names == ["model", "weights", "head_epochs", "image_size", "train_sizes",
                     "batch_size", "epochs", "time_budget", "cache", "cache_memory_gb", "limit",
                     "seed", "val_every", "other"]
    assert all(f.metadata["help"] for f in cli_fields())


def test_a_preset_keeps_its_builder_options_for_its_own_model_only():
    assert make_config("quick").model_kwargs == {"blocks": [1, 1, 1, 1]}
    assert make_config("quick", model="resnet").model_kwargs == {"blocks": [1, 1, 1, 1]}
    assert make_config("quick", model="mobilenet_v3_small").model_kwargs == {}
    assert make_config("quick", model="mobilenet_v3_small",
                       model_kwargs={"dropout": 0.1}).model_kwargs == {"dropout": 0.1}


def test_transfer_preset_is_two_stages_from_imagenet():
    cfg = make_config("transfer")
    assert cfg.weights == "imagenet" and 0 < cfg.head_epochs < cfg.epochs
    assert cfg.time_budget is None and cfg.fine_tune_lr_factor < 1
    for bad in (dict(head_epochs=-1), dict(epochs=3, head_epochs=3),
                dict(fine_tune_fraction=0.0), dict(fine_tune_fraction=1.5)):
        with pytest.raises(ConfigError):
            make_config("transfer", **bad)


def test_train_size_schedule():
    cfg = make_config("default", epochs=18, train_sizes=[96, 112])
    assert [cfg.train_size(e) for e in range(18)] == [96] * 9 + [112] * 9
    cfg = make_config("default", epochs=10, train_sizes=[64, 96, 128])
    assert [cfg.train_size(e) for e in range(10)] == [64] * 4 + [96] * 3 + [128] * 3
    cfg = make_config("quick", epochs=3, image_size=80)
    assert [cfg.train_size(e) for e in range(3)] == [80] * 3
    assert cfg.cache_size() == 80
    assert make_config("default", train_sizes=[96, 112], image_size=100).cache_size() == 112


def test_validation_schedule():
    assert make_config("quick", epochs=5, val_every=2).validation_epochs() == [2, 4, 5]
    assert make_config("quick", epochs=4, val_every=2).validation_epochs() == [2, 4]
    assert make_config("quick", epochs=3).validation_epochs() == [1, 2, 3]
    assert make_config("default").val_every == 2  # `default` validates every other epoch
    assert make_config("default", epochs=7).validation_epochs() == [2, 4, 6, 7]
    with pytest.raises(ConfigError, match="val_every"):
        make_config("quick", val_every=0).validation_epochs()


def test_a_short_budget_switches_default_to_the_fast_recipe_only():
    """Only ``default`` switches (to ``fast``); a recipe setting the user gives turns the
    switch off unless the switch is given too; the switched config keeps everything but the
    recipe, its photos at the size they were decoded at, and survives config.json."""
    assert make_config("default").short_budget_preset == "fast"
    assert {p for p in PRESETS if make_config(p).short_budget_preset} == {"default"}
    assert make_config("default", image_size=128).short_budget_preset == ""
    assert make_config("default", learning_rate=1e-3).short_budget_preset == ""
    assert make_config("default", precision="float32").short_budget_preset == "fast"
    assert make_config("quick", image_size=32, short_budget_preset="fast").short_budget_preset \
        == "fast"
    assert make_config("default", short_budget_preset="none").short_budget_preset == ""
    with pytest.raises(ConfigError, match="unknown short_budget_preset"):
        make_config("default", short_budget_preset="tiny")
    cfg = make_config("default", time_budget=5, seed=7, other="/o")
    short = cfg.short_budget_config()
    fast = make_config("fast")
    for name in ("image_size", "train_sizes", "learning_rate", "augmentation", "model",
                 "model_kwargs"):
        assert getattr(short, name) == getattr(fast, name), name
    # fast's recipe names its net, so a run of another model switches to that net whole
    switched = make_config("baseline", time_budget=5, short_budget_preset="fast") \
        .short_budget_config()
    assert (switched.model, switched.model_kwargs) == ("resnet", fast.model_kwargs)
    assert (short.time_budget, short.seed, short.other, short.preset) == (5, 7, "/o", "default")
    assert short.budget_recipe == "fast" and short.short_budget_preset == ""
    assert short.cache_size() == cfg.cache_size() == 128 > max(short.train_sizes)
    assert TrainConfig.from_dict(json.loads(json.dumps(short.to_dict()))) == short
    with pytest.raises(ConfigError, match="no short_budget_preset"):
        short.short_budget_config()
