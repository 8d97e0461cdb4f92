"""Backbones benchmark: Keras Applications backbones against our ``resnet``, and transfer.

1. **Transfer** (runs first). ImageNet weights cannot be downloaded on every machine, so the
   two-stage recipe is checked on a pretraining task built locally: ``--transfer-model`` is
   trained from scratch to tell the flower kinds of ``--flowers`` apart (supervised, softmax
   over the kinds), its backbone weights are saved, and PetImages is then trained
   ``--preset transfer --weights THAT_FILE``. The control is the same command with
   ``--weights none --head-epochs 0``: same model, epochs and schedule, random start.
2. **From scratch, one budget.** Every model of ``--models`` trained by
   ``catsdogs train --model NAME --time-budget MINUTES`` (the ``default`` recipe otherwise,
   without other photos), then exported to LiteRT (``catsdogs export``, with its 1e-4 check).

Measured per run: test accuracy and ROC AUC, epochs and training photos/s, wall seconds; for the
from-scratch runs also the LiteRT single-photo latency (JPEG bytes → P(dog), warm, p50) and batch
photos/s. Writes ``--out``/backbones.json and backbones.md (after every run, so a partial
result survives). Usage::

    python benchmarks/backbones.py [--budget 10] [--models resnet,mobilenet_v3_small,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from run import _cpu_flags, _cpu_name, single_photo_ms, train_preset

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")
MODELS = "resnet,mobilenet_v3_small,mobilenet_v3_large,efficientnet_v2_b0,resnet50"


def pretrain_on_flowers(model_name: str, flowers: str, out: str, epochs: int, size: int,
                        seed: int = 1337) -> dict:
    """Train ``model_name``'s backbone from scratch on the flower kinds (one sub-folder per
    kind, 90/10 train/val split), save the backbone's weights to ``out`` (.weights.h5) and
    return its val accuracy and seconds."""
    import keras

    from catsdogs.backbones import BACKBONES, CaffePreprocess, build_backbone
    from catsdogs.models import preprocessing_head

    def load(subset):
        return keras.utils.image_dataset_from_directory(
            flowers, image_size=(size, size), batch_size=64, seed=seed, validation_split=0.1,
            subset=subset, label_mode="int")

    train, val = load("training"), load("validation")
    names = train.class_names
    keras.utils.set_random_seed(seed)
    inputs, x = preprocessing_head(size, rescale=False)
    if BACKBONES[model_name].input_range == "caffe":
        x = CaffePreprocess()(x)
    x = keras.layers.RandomFlip("horizontal", seed=seed)(x)
    x = keras.layers.RandomZoom((-0.3, 0.0), seed=seed)(x)
    backbone = build_backbone(model_name)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    model = keras.Model(inputs, keras.layers.Dense(len(names), activation="softmax")(x))
    batches = len(train)
    steps = epochs * batches
    model.compile(keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(
                      0.0, steps, warmup_target=2e-3, warmup_steps=batches),
                      weight_decay=0.05),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    # Decoded once; the batches' order reshuffled every epoch.
    history = model.fit(train.cache().shuffle(batches, seed=seed), validation_data=val.cache(),
                        epochs=epochs, verbose=2)
    backbone.save_weights(out)
    return {"kinds": names, "epochs": epochs, "image_size": size,
            "seconds": time.perf_counter() - t0,
            "val_accuracy": float(history.history["val_accuracy"][-1]), "weights": out}


def summarise(run: str, info: dict) -> dict:
    """Accuracy, epochs and training photos/s of a finished run folder."""
    def read(name):
        with open(os.path.join(run, name)) as fh:
            return json.load(fh)

    metrics, timings, cfg = read("metrics.json"), read("timings.json"), read("config.json")
    with open(os.path.join(run, "history.csv")) as fh:
        rows = fh.read().strip().splitlines()[1:]
    budget = timings.get("budget")
    epochs = budget["epochs"] if budget else len(rows)
    n_train = sum(1 for line in open(os.path.join(run, "splits.csv")) if ",train," in line)
    train_seconds = timings.get("fit_seconds")
    return {"model": cfg["model"], "weights": cfg.get("weights", "none"),
            "test_accuracy": metrics["accuracy"], "test_roc_auc": metrics["roc_auc"],
            "epochs": epochs, "train_photos": n_train,
            "train_photos_per_s": budget["photos_per_second"] if budget else None,
            "train_seconds": train_seconds, "wall_seconds": info["wall_seconds"],
            "budget_minutes": cfg.get("time_budget"), "command": info["command"],
            "peak_rss_bytes": info["peak_rss_bytes"]}


def litert_speed(run: str, sample: str, n_single: int = 100, batch: int = 64) -> dict:
    """Export ``run`` to LiteRT (``catsdogs export``, checked to 1e-4) and time it: one photo
    from JPEG bytes (decode + preprocess + model, warm; p50 ms) and batches of prepared
    photos (photos/s)."""
    from catsdogs.data.images import load_image
    from catsdogs.data.preprocess import prepare
    from catsdogs.engines import load_engine
    from catsdogs.export import export_run
    from catsdogs.predict import Predictor

    export = export_run(run, "tflite", verbose=False)
    engine, cfg = load_engine(run, "tflite")
    with open(sample, "rb") as fh:
        data = fh.read()
    times = single_photo_ms(Predictor(engine, cfg.image_size, cfg.inference.threshold), data,
                            n_single, warm_up=5)
    prepared = np.repeat(prepare(load_image(data), cfg.image_size)[None].astype(np.float32),
                         batch, 0)
    engine(prepared)
    t0 = time.perf_counter()
    for _ in range(3):
        engine(prepared)
    return {"litert_p50_ms": float(np.percentile(times, 50)),
            "litert_batch_photos_per_s": 3 * batch / (time.perf_counter() - t0),
            "litert_bytes": export["bytes"], "max_abs_diff": export.get("max_abs_diff")}


def markdown(result: dict) -> str:
    lines = [f"# Backbones ({result['date']}, {result['machine']['cpu']}, "
             f"{' '.join(result['machine']['cpu_flags'])})", "",
             f"From scratch, `catsdogs train --model NAME --time-budget "
             f"{result['budget_minutes']:g}` (default recipe, no other photos):", "",
             "| model | test acc | ROC AUC | epochs | train photos/s | wall s | "
             "LiteRT p50 ms | LiteRT photos/s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["scratch"]:
        speed = r.get("train_photos_per_s") or {}
        rate = " / ".join(f"{v:.0f}" for v in speed.values()) if speed else "–"
        lines.append(f"| {r['model']} | {r['test_accuracy']:.4f} | {r['test_roc_auc']:.4f} | "
                     f"{r['epochs']:.1f} | {rate} | {r['wall_seconds']:.0f} | "
                     f"{r.get('litert_p50_ms', float('nan')):.2f} | "
                     f"{r.get('litert_batch_photos_per_s', float('nan')):.0f} |")
    if t := result.get("transfer"):
        p = t["pretrain"]
        lines += ["", f"Transfer ({t['model']}): pretrained on {len(p['kinds'])} flower kinds, "
                      f"{p['epochs']} epochs at {p['image_size']} px, val accuracy "
                      f"{p['val_accuracy']:.4f} in {p['seconds']:.0f} s.", "",
                  "| start | test acc | ROC AUC | epochs | wall s |", "|---|---|---|---|---|"]
        for key in ("fine_tuned", "from_scratch"):
            if r := t.get(key):
                lines.append(f"| {key.replace('_', ' ')} | {r['test_accuracy']:.4f} | "
                             f"{r['test_roc_auc']:.4f} | {r['epochs']} | "
                             f"{r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "PetImages"))
    parser.add_argument("--flowers", default=os.path.join(SHARED, "other", "flowers"))
    parser.add_argument("--sample", default=os.path.join(SHARED, "samples", "dog.4001.jpg"))
    parser.add_argument("--models", default=MODELS, help="comma-separated registry names")
    parser.add_argument("--budget", type=float, default=10.0, help="minutes per model")
    parser.add_argument("--transfer-model", default="mobilenet_v3_small",
                        help="backbone of the transfer check ('none': skip it)")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--transfer-epochs", type=int, default=6,
                        help="epochs of both transfer runs (the preset's 2 head epochs first)")
    parser.add_argument("--transfer-size", type=int, default=128, help="pixels")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--keep-runs", metavar="DIR", help="keep run folders in DIR")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    import tensorflow as tf

    workdir = os.path.abspath(args.keep_runs or tempfile.mkdtemp(prefix="catsdogs-bb-"))
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_minutes": args.budget,
              "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(),
                          "platform": platform.platform(), "cpu_flags": _cpu_flags(),
                          "tensorflow": tf.__version__},
              "scratch": []}

    def save():
        with open(os.path.join(args.out, "backbones.json"), "w") as fh:
            json.dump(result, fh, indent=2)
        with open(os.path.join(args.out, "backbones.md"), "w") as fh:
            fh.write(markdown(result))

    if args.transfer_model != "none":
        weights = os.path.join(workdir, f"{args.transfer_model}-flowers.weights.h5")
        pre = pretrain_on_flowers(args.transfer_model, args.flowers, weights,
                                  args.pretrain_epochs, size=args.transfer_size)
        result["transfer"] = {"model": args.transfer_model, "pretrain": pre}
        common = ["--model", args.transfer_model, "--epochs", str(args.transfer_epochs),
                  "--image-size", str(args.transfer_size)]
        for key, extra in (("fine_tuned", ["--weights", weights]),
                           ("from_scratch", ["--weights", "none", "--head-epochs", "0"])):
            info = train_preset(args.data, "transfer", workdir, [*common, *extra],
                                f"transfer-{key}")
            result["transfer"][key] = summarise(info["run"], info)
            save()
    for name in args.models.split(","):
        info = train_preset(args.data, "default", workdir,
                            ["--model", name, "--time-budget", f"{args.budget:g}"], name)
        row = summarise(info["run"], info)
        if os.path.exists(args.sample):
            row.update(litert_speed(info["run"], args.sample))
        result["scratch"].append(row)
        save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
