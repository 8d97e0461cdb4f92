"""catsdogs benchmark: accuracy per CPU-minute, side by side, on this machine.

    python benchmarks/run.py --data ../shared/data/PetImages            # make bench
    python benchmarks/run.py --data ../shared/data/PetImages --quick    # make bench-quick

Plus the accuracy-vs-budget curve: ``default`` trained to time budgets of 3, 5, 10 and 20
minutes (the ``default`` row itself is the 30-minute point; ``--quick``: one 1-minute budget on
a subset) → test accuracy, wall time and overrun per budget, ``baseline`` as the reference
line; ``benchmarks/results/budget.png``.

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
``model.predict``, a compiled ``tf.function``, the ``catsdogs export`` ONNX (ONNX Runtime) and
LiteRT models, the opt-in int8 LiteRT export (``--format tflite-int8``), and a fully int8
LiteRT variant (measured only).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
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
    from catsdogs.models import build_model, forward_flops

    return forward_flops(build_model(name, image_size, **model_kwargs), image_size)


def train_preset(data: str, preset: str, workdir: str, extra: list[str], name: str = "") -> dict:
    """Run ``catsdogs train`` for one preset (into ``workdir/name``, default the preset's
    name); return wall time, peak RSS and the run folder."""
    out = os.path.join(workdir, name or preset)
    cmd = [sys.executable, "-m", "catsdogs.cli", "train", "--data", data, "--out", out,
           "--preset", preset, "--no-progress", "--overwrite", *extra]
    print("$ catsdogs " + " ".join(cmd[3:]), flush=True)
    # os.wait4 gives this child's own resource usage; RUSAGE_CHILDREN would give the largest
    # peak of all children so far, so every preset after the biggest would report its peak.
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"train {preset} failed (exit {proc.returncode}):\n"
                             f"{log.read()[-6000:]}")
    rss = usage.ru_maxrss * 1024  # Linux reports KiB
    return {"run": out, "wall_seconds": wall, "peak_rss_bytes": rss,
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
    with open(os.path.join(run, "timings.json")) as fh:
        timings = json.load(fh)
    train_seconds = sum(float(r["seconds"]) for r in history)
    budget = timings.get("budget")
    # A time-budget run's last epoch may be partial: count its optimizer steps instead.
    epochs_done = budget["epochs"] if budget else len(history)
    photos_per_s = n_train * epochs_done / train_seconds
    flops = model_flops(cfg["preset"], cfg["image_size"], cfg["model_kwargs"], cfg["model"])
    # Progressive resizing trains epochs at different sizes: average the forward FLOPs of the
    # size each epoch trained at (every epoch sees the same photos).
    from catsdogs.budget import BudgetPlan
    from catsdogs.config import TrainConfig

    size_of = (BudgetPlan.load(run).size if budget else TrainConfig.load(run).train_size)
    sizes = [size_of(e) for e in range(len(history))]
    per_size = {s: flops if s == cfg["image_size"] else
                model_flops(cfg["preset"], s, cfg["model_kwargs"], cfg["model"])
                for s in set(sizes)}
    train_flops = sum(per_size[s] for s in sizes) / len(sizes)
    achieved = 3 * train_flops * photos_per_s
    # Epochs that were not validated (TrainConfig.val_every) have no val_accuracy: a threshold
    # counts as reached at the first validated epoch at or above it.
    from catsdogs.runfolder import validated_rows

    validated = validated_rows(history)
    reach = {}
    for t in THRESHOLDS:
        hit = next((r for r in validated if float(r["val_accuracy"]) >= t), None)
        reach[f"{int(t * 100)}"] = None if hit is None else float(hit["elapsed"])
    return {"preset": cfg["preset"], "model": cfg["model"], "image_size": cfg["image_size"],
            "epochs": len(history), "n_train": n_train, "train_seconds": train_seconds,
            "train_sizes": sorted(set(sizes)), "train_photos_per_s": photos_per_s,
            "model_flops_per_photo": flops, "train_flops_per_photo": train_flops,
            "achieved_flops_per_s": achieved, "fraction_of_peak": achieved / peak,
            "seconds_to_val_accuracy": reach,
            "best_val_accuracy": max(float(r["val_accuracy"]) for r in validated),
            "test_accuracy": metrics["accuracy"], "test_roc_auc": metrics["roc_auc"],
            "test_n": metrics["n"], "timings": timings,
            "budget_minutes": cfg.get("time_budget"), "other": bool(cfg.get("other")),
            "recipe": cfg.get("budget_recipe") or cfg["preset"],
            "own_recipe_epochs": cfg.get("own_recipe_epochs")}


def budget_curve(rows: list[dict]) -> list[dict]:
    """One point per time-budget run of ``default``: budget, test accuracy, wall time of the
    whole command and its overrun (seconds and fraction of the budget; negative: time left)."""
    points = []
    for r in rows:
        if r["preset"] != "default" or not r.get("budget_minutes"):
            continue
        budget_s = 60 * r["budget_minutes"]
        points.append({"budget_minutes": r["budget_minutes"], "test_accuracy": r["test_accuracy"],
                       "wall_seconds": r["wall_seconds"],
                       "overrun_seconds": r["wall_seconds"] - budget_s,
                       "overrun_fraction": (r["wall_seconds"] - budget_s) / budget_s,
                       "planned_steps": r["timings"]["budget"]["planned_steps"],
                       "steps": r["timings"]["budget"]["steps"],
                       "epochs": r["timings"]["budget"]["epochs"], "other": r["other"],
                       "recipe": r["recipe"], "own_recipe_epochs": r["own_recipe_epochs"],
                       "train_sizes": r["train_sizes"]})
    return sorted(points, key=lambda p: p["budget_minutes"])


def plot_budget(points: list[dict], baseline: dict | None, file: str) -> None:
    """Test accuracy against the time budget (``budget.png``), ``baseline`` as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    x = [p["budget_minutes"] for p in points]
    ax.plot(x, [100 * p["test_accuracy"] for p in points], "o-", label="default, time budget")
    for p in points:
        ax.annotate(f"{p['wall_seconds'] / 60:.1f} min", (p["budget_minutes"],
                                                           100 * p["test_accuracy"]),
                    textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
    if baseline is not None:
        ax.axhline(100 * baseline["test_accuracy"], color="grey", ls="--",
                   label=f"baseline (tutorial net, {baseline['wall_seconds'] / 60:.1f} min)")
    ax.set_xlabel("time budget, minutes (the whole train command)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("Accuracy per time budget (labels: measured wall time)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(file)
    plt.close(fig)


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


def _full_int8_tflite(model, run: str, calibration: np.ndarray) -> str:
    """Write a fully int8 LiteRT copy of ``model`` (int8 weights and activations, calibrated on
    ``calibration``, prepared images ``(n, S, S, 3) float32``; full-integer post-training
    quantization, https://ai.google.dev/edge/litert/models/post_training_quantization) into the
    run folder, for measurement only."""
    import tensorflow as tf

    from catsdogs.export import write_model_file

    path = os.path.join(run, "bench-int8.tflite")
    options = {"optimizations": [tf.lite.Optimize.DEFAULT],
               "representative_dataset": lambda: ([calibration[i:i + 1]]
                                                  for i in range(len(calibration)))}
    write_model_file(model, calibration.shape[1], path, "tflite", **options)
    return path


def _p_dog(outputs) -> np.ndarray:
    """P(dog), ``(n,)``, from a model's or an engine's outputs: ``(n,)``, or ``(n, k)`` with
    P(dog) in column 0."""
    outputs = np.asarray(outputs)
    return outputs.reshape(len(outputs), -1)[:, 0]


def single_photo_ms(predictor, data: bytes, n: int, warm_up: int = 10) -> list[float]:
    """Milliseconds of ``n`` warm calls of ``predictor`` on one photo's JPEG ``data`` (decode
    + preprocess + model), after ``warm_up`` untimed calls."""
    for _ in range(warm_up):
        predictor.predict_sources([data], ["warm-up"])
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        predictor.predict_sources([data], ["x"])
        times.append((time.perf_counter() - t0) * 1000)
    return times


def inference(run: str, sample: str, n_single: int = 200, batch: int = 256,
              n_val: int = 1000) -> dict:
    """Per inference path: one-photo latency (JPEG bytes → decode + preprocess + model, warm)
    and batch throughput (prepared photos), plus agreement with the Keras model and accuracy on
    ``n_val`` validation photos (quantized paths change probabilities, so accuracy is the check).

    Paths: Keras ``model.predict``; the compiled ``tf.function`` (catsdogs' Keras engine); the
    ``catsdogs export`` ONNX model in ONNX Runtime and LiteRT model in the LiteRT interpreter
    (XNNPACK); the opt-in ``catsdogs export --format tflite-int8`` (int8 weights, dynamic range;
    key ``tflite_dynamic``); and, measured only, full int8 (key ``tflite_int8``).
    """
    from catsdogs.data.images import load_image
    from catsdogs.data.preprocess import prepare
    from catsdogs.data.split import load_split, select
    from catsdogs.engines import LiteRTEngine, load_engine
    from catsdogs.export import export_run
    from catsdogs.predict import Predictor

    keras_engine, cfg = load_engine(run, "keras")
    size, threshold = cfg.image_size, cfg.inference.threshold
    exports = {fmt: export_run(run, fmt, verbose=False)
               for fmt in ("onnx", "tflite", "tflite-int8")}
    paths, labels = select(load_split(os.path.join(run, "splits.csv")), "val")
    # Spread over the whole split: it is sorted by path, so its first photos are all cats.
    pick = np.unique(np.linspace(0, len(paths) - 1, min(n_val, len(paths))).astype(int))
    val = np.stack([prepare(load_image(paths[i]), size) for i in pick]).astype(np.float32)
    val_y = np.asarray(labels)[pick]
    reference = _p_dog(keras_engine(val))
    engines = {"keras_predict": None, "tf_function": keras_engine,
               "onnx": load_engine(run, "onnx")[0], "tflite": load_engine(run, "tflite")[0],
               "tflite_dynamic": load_engine(run, "tflite-int8")[0],
               "tflite_int8": LiteRTEngine(
                   _full_int8_tflite(keras_engine.model, run, val[:200]))}
    with open(sample, "rb") as fh:
        data = fh.read()
    prepared = np.repeat(prepare(load_image(data), size)[None].astype(np.float32), batch, 0)
    model = keras_engine.model
    out = {}
    for name, engine in engines.items():
        if engine is None:  # model.predict: Keras' own loop, batch only
            def call(x):
                return model.predict(x, batch_size=batch, verbose=0)
            single = None
        else:
            call = engine
            times = single_photo_ms(Predictor(engine, size, threshold), data, n_single)
            single = {q: float(np.percentile(times, int(q[1:]))) for q in ("p50", "p95", "p99")}
        call(prepared)
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            call(prepared)
        photos_per_s = batch * reps / (time.perf_counter() - t0)
        p = np.concatenate([_p_dog(call(val[i:i + batch])) for i in range(0, len(val), batch)])
        out[name] = {"single_photo_ms": single, "batch_photos_per_s": photos_per_s,
                     "max_abs_diff_vs_keras": float(np.max(np.abs(p - reference))),
                     "val_accuracy": float(np.mean((p >= threshold) == val_y)),
                     "label_agreement_vs_keras": float(np.mean(
                         (p >= threshold) == (reference >= threshold)))}
    os.unlink(os.path.join(run, "bench-int8.tflite"))
    return {"engines": out, "batch_size": batch, "n_val": int(len(val)),
            "export_bytes": {k: v["bytes"] for k, v in exports.items()},
            "keras_val_accuracy": float(np.mean((reference >= threshold) == val_y))}


def markdown(result: dict) -> str:
    rows = result["presets"]
    base = next((r for r in rows if r["preset"] == "baseline"), None)
    lines = [f"catsdogs benchmark — {result['machine']['cpu']}, {result['machine']['cores']} "
             f"cores, {result['mode']} mode, {result['date']}", "",
             f"Measured peak (float32 matmul): {result['peak_flops_per_s'] / 1e9:.0f} GFLOP/s. "
             f"Input pipeline: {result['input_pipeline_photos_per_s']:.0f} photos/s.", "",
             "| preset | px | epochs | train wall s | train photos/s | GFLOPs/photo train / "
             "classify | achieved GFLOP/s | % of peak | peak RSS GiB | s to 80/85/90/93 % val | "
             "test acc |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def vs_base(r: dict, value, what: str = "baseline") -> str:
        """`` (N× what)`` with N = value(r) / value(baseline); ``""`` for baseline or none."""
        if base is None or r is base or not value(base):
            return ""
        return f" ({value(r) / value(base):.2f}× {what})"

    for r in rows:
        reach = "/".join("–" if v is None else f"{v:.0f}"
                         for v in r["seconds_to_val_accuracy"].values())
        photos = vs_base(r, lambda x: x["train_photos_per_s"])
        flops = vs_base(r, lambda x: x["achieved_flops_per_s"])
        errors = vs_base(r, lambda x: 1 - x["test_accuracy"], "baseline's errors")
        name = r["preset"] + (f" ({r['budget_minutes']:g} min)" if r.get("budget_minutes")
                              else "")
        lines.append(
            f"| {name} | {r['image_size']} | {r['epochs']} | {r['wall_seconds']:.0f} | "
            f"{r['train_photos_per_s']:.0f}{photos} | "
            f"{r['train_flops_per_photo'] / 1e9:.3f} / {r['model_flops_per_photo'] / 1e9:.3f} | "
            f"{r['achieved_flops_per_s'] / 1e9:.1f}{flops} | "
            f"{100 * r['fraction_of_peak']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} | {reach} | "
            f"{r['test_accuracy']:.4f}{errors} |")
    curve = result.get("budget_curve")
    if curve:
        lines += ["", "Accuracy per time budget (`default`, the whole `train` command; "
                      "overrun: wall time beyond the budget, negative = time left):", "",
                  "| budget min | test acc | wall min | overrun s (% of budget) | "
                  "planned / trained steps | epochs | recipe, px |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for p in curve:
            lines.append(f"| {p['budget_minutes']:g} | {p['test_accuracy']:.4f} | "
                         f"{p['wall_seconds'] / 60:.1f} | {p['overrun_seconds']:+.0f} "
                         f"({100 * p['overrun_fraction']:+.1f} %) | {p['planned_steps']} / "
                         f"{p['steps']} | {p['epochs']:.1f} | {p['recipe']}, "
                         f"{'/'.join(map(str, p['train_sizes']))} |")
    inf = result.get("inference")
    if inf:
        lines += ["", f"Inference ({inf['run_preset']} model; one photo = JPEG bytes → decode + "
                      f"preprocess + model, warm; batch of {inf['batch_size']} prepared photos; "
                      f"accuracy on {inf['n_val']} validation photos):", "",
                  "| path | 1 photo p50 / p95 / p99 ms | batch photos/s | max abs ΔP(dog) vs "
                  "Keras | val accuracy |", "| --- | --- | --- | --- | --- |"]
        for name, e in inf["engines"].items():
            s1 = e["single_photo_ms"]
            lat = "–" if s1 is None else f"{s1['p50']:.2f} / {s1['p95']:.2f} / {s1['p99']:.2f}"
            lines.append(f"| {name} | {lat} | {e['batch_photos_per_s']:.0f} | "
                         f"{e['max_abs_diff_vs_keras']:.1e} | {e['val_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                       "PetImages"))
    parser.add_argument("--quick", action="store_true",
                        help="≤ 3 minutes: quick preset, baseline/default on a 400-photo subset")
    parser.add_argument("--presets", default=None, help="comma-separated (full mode)")
    parser.add_argument("--budgets", default=None,
                        help="comma-separated minutes for the accuracy-vs-budget curve besides "
                             "the default preset's own 30 (default: 3,5,10,20; quick: none, "
                             "its default row is a 1-minute budget); 'none' skips it")
    parser.add_argument("--other", default=None, metavar="DIR",
                        help="non-pet photos for --other in the default runs (as `make "
                             "train` does when ../shared/data/other exists)")
    parser.add_argument("--sample", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                         "samples", "cat.4001.jpg"))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--keep-runs", metavar="DIR",
                        help="train into DIR/<preset> and keep the run folders (for "
                             "`catsdogs export`, benchmarks/load_serve.py or a look at the "
                             "plots); default: a temporary folder, deleted at the end")
    args = parser.parse_args()
    data = os.path.abspath(args.data)
    if not os.path.isdir(data):
        raise SystemExit(f"no photo folder at {data}; pass --data")
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    # catsdogs before TensorFlow, so the peak matmul runs with the same (oneDNN) kernels as
    # `catsdogs train` (see catsdogs.ONEDNN_DEFAULT).
    importlib.import_module("catsdogs")
    import tensorflow as tf

    if args.keep_runs:
        workdir = os.path.abspath(args.keep_runs)
        os.makedirs(workdir, exist_ok=True)
    else:
        workdir = tempfile.mkdtemp(prefix="catsdogs-bench-")
    peak = peak_matmul_flops()
    other = ["--other", os.path.abspath(args.other)] if args.other else []
    if args.quick:
        # No --other here: its 4,000 outliers would outnumber a 400-photo subset.
        plan = [("default", ["--limit", "200", "--time-budget", "1"], ""),
                ("baseline", ["--limit", "200", "--epochs", "2"], "")]
        budgets = []
    else:
        names = (args.presets or "default,fast,quick,baseline").split(",")
        plan = [(p, other if p in ("default", "fast") else [], "") for p in names]
        budgets = [] if args.budgets == "none" else \
            [float(b) for b in (args.budgets or "3,5,10,20").split(",")]
    plan += [("default", ["--time-budget", f"{b:g}", *other], f"default-{b:g}min")
             for b in budgets]
    rows = []
    for preset, extra, name in plan:
        info = train_preset(data, preset, workdir, extra, name)
        rows.append({**summarise_run(info["run"], peak), **info})
    result = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "cpu_flags": _cpu_flags(), "tensorflow": tf.__version__,
                    "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")},
        "peak_flops_per_s": peak,
        "input_pipeline_photos_per_s": input_pipeline(data, n=500 if args.quick else 2000),
        "presets": rows,
        "budget_curve": budget_curve(rows),
    }
    os.makedirs(args.out, exist_ok=True)
    if result["budget_curve"]:
        plot_budget(result["budget_curve"], next((r for r in rows if r["preset"] == "baseline"),
                                                 None), os.path.join(args.out, "budget.png"))
    # Inference on the longest-trained default run (its own preset budget before the curve's).
    defaults = [r for r in rows if r["preset"] == "default"]
    target = max(defaults, key=lambda r: r["wall_seconds"]) if defaults else rows[-1]
    if os.path.exists(args.sample):
        result["inference"] = {**inference(target["run"], args.sample,
                                           n_single=50 if args.quick else 200),
                               "run_preset": target["preset"]}
    for r in rows:
        r["run"] = r["run"].replace(workdir, "RUNS")
    write_results(args.out, "latest", result, markdown(result))
    if args.keep_runs:
        print(f"Run folders kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def write_results(out: str, name: str, result: dict, table: str) -> None:
    """Write ``out/NAME.json`` (``result``) and ``out/NAME.md`` (``table``), and print the
    table: how every benchmark script reports."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    with open(os.path.join(out, f"{name}.md"), "w") as fh:
        fh.write(table)
    print(table)


def _cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions that decide TensorFlow's kernels (from
    /proc/cpuinfo; empty where it is missing)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16",
              "amx_int8")
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


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
