"""catsdogs benchmark: accuracy per CPU-minute, side by side, on this machine.

    python benchmarks/run.py --data ../shared/data/PetImages            # make bench
    python benchmarks/run.py --data ../shared/data/PetImages --quick    # make bench-quick

Trains each preset with the real command line (``catsdogs train``, a subprocess, so wall time
and peak memory are the user's), then reads the run folder. Writes
``benchmarks/results/latest.json`` and ``latest.md`` (also printed); keys are documented in
``benchmarks/README.md``. A benchmark, not a test: nothing here asserts.

Measured per preset: wall seconds of ``train`` (scan to report), peak RSS, training photos/s
(train photos × epochs / summed epoch seconds, validation pass included), model FLOPs per photo
(TensorFlow's profiler on the frozen float32 forward graph; training ≈ 3× forward, Kaplan et al.
2020, arXiv:2001.08361 §2.1), achieved FLOP/s and its fraction of this CPU's measured peak (a
dense float32 matmul timed in the same run), time until validation accuracy first reaches 80,
85, 90 and 93 %, and final test accuracy. Plus input-pipeline decode+resize photos/s and
inference latency (decode + preprocess + model, one photo) and batch throughput for Keras
``model.predict`` and a compiled ``tf.function``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
THRESHOLDS = (0.80, 0.85, 0.90, 0.93)


def peak_matmul_flops(n: int = 2048, repeats: int = 20) -> float:
    """Best-of-``repeats`` FLOP/s of an ``n×n`` float32 matmul (2·n³ FLOPs) on all cores."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    mm(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def model_flops(preset: str, image_size: int, model_kwargs: dict, name: str) -> float:
    """Forward FLOPs for one photo (multiply-add = 2 FLOPs), from TF's graph profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    from catsdogs.models import build_model

    model = build_model(name, image_size, **model_kwargs)
    spec = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))
    opts = ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return float(profile(frozen.graph, options=opts).total_float_ops)


def train_preset(data: str, preset: str, workdir: str, extra: list[str]) -> dict:
    """Run ``catsdogs train`` for one preset; return wall time, peak RSS and the run folder."""
    out = os.path.join(workdir, preset)
    cmd = [sys.executable, "-m", "catsdogs.cli", "train", "--data", data, "--out", out,
           "--preset", preset, "--no-progress", "--overwrite", *extra]
    print("$ catsdogs " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"train {preset} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    return {"run": out, "wall_seconds": wall, "peak_rss_bytes_max_so_far": rss,
            "command": "catsdogs " + " ".join(cmd[3:]).replace(workdir, "RUNS")}


def summarise_run(run: str, peak: float) -> dict:
    with open(os.path.join(run, "config.json")) as fh:
        cfg = json.load(fh)
    with open(os.path.join(run, "history.csv")) as fh:
        history = list(csv.DictReader(fh))
    with open(os.path.join(run, "metrics.json")) as fh:
        metrics = json.load(fh)
    with open(os.path.join(run, "splits.csv")) as fh:
        n_train = sum(r["split"] == "train" for r in csv.DictReader(fh))
    train_seconds = sum(float(r["seconds"]) for r in history)
    photos_per_s = n_train * len(history) / train_seconds
    flops = model_flops(cfg["preset"], cfg["image_size"], cfg["model_kwargs"], cfg["model"])
    achieved = 3 * flops * photos_per_s
    reach = {}
    for t in THRESHOLDS:
        hit = next((r for r in history if float(r["val_accuracy"]) >= t), None)
        reach[f"{int(t * 100)}"] = None if hit is None else float(hit["elapsed"])
    return {"preset": cfg["preset"], "model": cfg["model"], "image_size": cfg["image_size"],
            "epochs": len(history), "n_train": n_train, "train_seconds": train_seconds,
            "train_photos_per_s": photos_per_s, "model_flops_per_photo": flops,
            "achieved_flops_per_s": achieved, "fraction_of_peak": achieved / peak,
            "seconds_to_val_accuracy": reach,
            "best_val_accuracy": max(float(r["val_accuracy"]) for r in history),
            "test_accuracy": metrics["accuracy"], "test_roc_auc": metrics["roc_auc"],
            "test_n": metrics["n"]}


def input_pipeline(data: str, n: int = 2000, image_size: int = 112) -> float:
    """Photos/s decoded (Pillow) and resized by the training pipeline, first (uncached) pass."""
    from catsdogs.data.pipeline import make_dataset
    from catsdogs.data.scan import find_labelled_files

    _, labelled, _ = find_labelled_files(data)
    paths = [p for p, _ in labelled[:: max(1, len(labelled) // n)]][:n]
    ds = make_dataset(paths, None, image_size, 64, cache=False)
    t0 = time.perf_counter()
    count = sum(int(x.shape[0]) for x in ds)
    return count / (time.perf_counter() - t0)


def inference(run: str, sample: str, n_single: int = 200, batch: int = 256) -> dict:
    """Latency of one photo (decode + preprocess + model) and batch throughput per path."""
    import tensorflow as tf

    from catsdogs.data.images import load_image
    from catsdogs.predict import Predictor, prepare

    predictor = Predictor.from_run(run)
    with open(sample, "rb") as fh:
        data = fh.read()
    for _ in range(10):
        predictor.predict_sources([data], ["warm-up"])
    times = []
    for _ in range(n_single):
        t0 = time.perf_counter()
        predictor.predict_sources([data], ["x"])
        times.append((time.perf_counter() - t0) * 1000)
    prepared = np.stack([prepare(load_image(data), predictor.image_size)] * batch)
    x = tf.convert_to_tensor(prepared, tf.float32)
    model = predictor.model
    paths = {
        "keras_predict": lambda: model.predict(x, batch_size=batch, verbose=0),
        "tf_function": lambda: predictor._call(x).numpy(),
    }
    throughput = {}
    for name, fn in paths.items():
        fn()
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            fn()
        throughput[name] = batch * reps / (time.perf_counter() - t0)
    return {"single_photo_ms": {"p50": float(np.percentile(times, 50)),
                                "p95": float(np.percentile(times, 95)),
                                "p99": float(np.percentile(times, 99))},
            "batch_photos_per_s": throughput, "batch_size": batch,
            "path_for_single_photo": "Predictor (tf_function)"}


def markdown(result: dict) -> str:
    rows = result["presets"]
    base = next((r for r in rows if r["preset"] == "baseline"), None)
    lines = [f"catsdogs benchmark — {result['machine']['cpu']}, {result['machine']['cores']} "
             f"cores, {result['mode']} mode, {result['date']}", "",
             f"Measured peak (float32 matmul): {result['peak_flops_per_s'] / 1e9:.0f} GFLOP/s. "
             f"Input pipeline: {result['input_pipeline_photos_per_s']:.0f} photos/s.", "",
             "| preset | px | epochs | train wall s | train photos/s | GFLOPs/photo | achieved "
             "GFLOP/s | % of peak | peak RSS GiB | s to 80/85/90/93 % val | test acc |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        reach = "/".join("–" if v is None else f"{v:.0f}"
                         for v in r["seconds_to_val_accuracy"].values())
        ratio = (f" ({r['train_photos_per_s'] / base['train_photos_per_s']:.2f}× baseline)"
                 if base and r is not base else "")
        lines.append(
            f"| {r['preset']} | {r['image_size']} | {r['epochs']} | {r['wall_seconds']:.0f} | "
            f"{r['train_photos_per_s']:.0f}{ratio} | {r['model_flops_per_photo'] / 1e9:.3f} | "
            f"{r['achieved_flops_per_s'] / 1e9:.1f} | {100 * r['fraction_of_peak']:.1f} | "
            f"{r['peak_rss_bytes_max_so_far'] / 2**30:.2f} | {reach} | "
            f"{r['test_accuracy']:.4f} |")
    inf = result.get("inference")
    if inf:
        s = inf["single_photo_ms"]
        lines += ["", f"Inference ({inf['run_preset']}): one photo (decode + preprocess + model) "
                      f"p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms, p99 {s['p99']:.1f} ms; "
                      "batch of " + str(inf["batch_size"]) + ": " +
                      ", ".join(f"{k} {v:.0f} photos/s"
                                for k, v in inf["batch_photos_per_s"].items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                       "PetImages"))
    parser.add_argument("--quick", action="store_true",
                        help="≤ 3 minutes: quick preset, baseline/default on a 400-photo subset")
    parser.add_argument("--presets", default=None, help="comma-separated (full mode)")
    parser.add_argument("--sample", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                         "samples", "cat.4001.jpg"))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    data = os.path.abspath(args.data)
    if not os.path.isdir(data):
        raise SystemExit(f"no photo folder at {data}; pass --data")
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    import tensorflow as tf

    workdir = tempfile.mkdtemp(prefix="catsdogs-bench-")
    peak = peak_matmul_flops()
    if args.quick:
        plan = [("default", ["--limit", "200", "--epochs", "1"]),
                ("baseline", ["--limit", "200", "--epochs", "2"])]
    else:
        names = (args.presets or "default,quick,baseline").split(",")
        plan = [(p, []) for p in names]
    rows = []
    for preset, extra in plan:
        info = train_preset(data, preset, workdir, extra)
        rows.append({**summarise_run(info["run"], peak), **info})
    result = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__},
        "peak_flops_per_s": peak,
        "input_pipeline_photos_per_s": input_pipeline(data, n=500 if args.quick else 2000),
        "presets": rows,
    }
    target = next((r for r in rows if r["preset"] == "default"), rows[-1])
    if os.path.exists(args.sample):
        result["inference"] = {**inference(target["run"], args.sample,
                                           n_single=50 if args.quick else 200),
                               "run_preset": target["preset"]}
    for r in rows:
        r["run"] = r["run"].replace(workdir, "RUNS")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "latest.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    table = markdown(result)
    with open(os.path.join(args.out, "latest.md"), "w") as fh:
        fh.write(table)
    print(table)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
