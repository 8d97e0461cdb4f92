"""The command line: ``catsdogs data|train|models|evaluate|predict|explain|serve|export``.

A thin layer over the Python API (:mod:`catsdogs.api`): it parses options, calls the API and
prints. Every sub-command has ``--help``. Errors caused by input (bad folder, bad run folder, bad
photo, bad setting) print one line, ``error: …``, and exit non-zero, without a traceback.

Only light modules are imported at the top; the command that runs imports the API (and with it
TensorFlow) after :func:`_quiet_tensorflow`, so ``--help`` answers at once and TensorFlow's
start-up banners stay off the terminal.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import os
import sys
import time

from catsdogs.config import ENGINES, PRESETS, cli_fields, parse_setting
from catsdogs.constants import VERSION
from catsdogs.data.download import PETIMAGES_SHA256, PETIMAGES_URL, download_petimages
from catsdogs.data.scan import scan_folder, summary_lines
from catsdogs.errors import CatsDogsError, ConfigError, DataError, TrainingInterrupted
from catsdogs.io import atomic_write_text
from catsdogs.runfolder import EXPORT_FILES

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up log lines (absl/oneDNN banners, which no
    environment variable silences in TF 2.21) kept off the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("CATSDOGS_VERBOSE_TF"):
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _api():
    """:mod:`catsdogs.api`, imported (with TensorFlow, quietly) by the command that needs it."""
    _quiet_tensorflow()
    return importlib.import_module("catsdogs.api")


# -- commands ------------------------------------------------------------------------------

def cmd_data_check(args) -> int:
    result = scan_folder(args.dir, progress=not args.no_progress)
    if args.report:
        result.write_json(args.report)
    for line in summary_lines(result):
        print(line)
    try:
        result.check_usable()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("usable: yes")
    return EXIT_OK


def cmd_data_download(args) -> int:
    target = download_petimages(args.to, url=args.url, sha256=args.sha256,
                                progress=not args.no_progress)
    print(f"PetImages ready: {target}\nTrain with: catsdogs train --data {target} --out runs/pets")
    return EXIT_OK


def train_settings(args) -> dict:
    """The ``TrainConfig`` overrides given on the command line: the per-setting flags, then
    every ``--set KEY=VALUE`` (which wins). ``--image-size`` alone also trains at that size.

    Raises:
        ConfigError: a bad ``--set``.
    """
    settings = {f.name: getattr(args, f.name) for f in cli_fields()
                if getattr(args, f.name) is not None}
    if "image_size" in settings and "train_sizes" not in settings:
        settings["train_sizes"] = []
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip().removeprefix("inference.")] = parse_setting(key.strip(), value)
    return settings


def cmd_train(args) -> int:
    started = time.perf_counter()  # a --time-budget counts TensorFlow's import too
    if not args.resume and not args.data:
        raise ConfigError("--data DIR is required (unless --resume continues an existing run)")
    _api().train(args.data, args.out, args.preset, resume=args.resume, overwrite=args.overwrite,
                 progress=not args.no_progress, started=started, workers=args.workers,
                 worker_index=args.worker_index, **train_settings(args))
    return EXIT_OK


def cmd_models(args) -> int:
    rows = []
    print(f"{'model':<20} {'size':>5} {'parameters':>11} {'GFLOPs/photo':>13}  weights")
    for row in _api().models():
        rows.append(row)
        print(f"{row['name']:<20} {row['image_size']:>5} {row['parameters']:>11,} "
              f"{row['flops'] / 1e9:>13.3f}  {row['weights']}", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return EXIT_OK


def _inference(args) -> dict:
    """The inference overrides given on the command line (``None``: the run's own)."""
    return {"threshold": args.threshold, "tta": args.tta, "engine": args.engine}


def cmd_evaluate(args) -> int:
    _api().load(args.run).evaluate(args.data, progress=not args.no_progress,
                                   other_data=args.other_data, **_inference(args))
    return EXIT_OK


def _write_csv(file: str, results) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "p_dog", "p_cat", "error", "ood_score"])
    for r in results:
        w.writerow([r.path, r.label or "", "" if r.p_dog is None else f"{r.p_dog:.6f}",
                    "" if r.p_cat is None else f"{r.p_cat:.6f}", r.error or "",
                    "" if r.ood_score is None else f"{r.ood_score:.6f}"])
    atomic_write_text(file, buf.getvalue())


def cmd_predict(args) -> int:
    api = _api()
    run = api.load(args.run)
    predictor = run.predictor(**_inference(args))
    if not args.json:
        print(f"# {args.run}: {predictor.engine_name} engine", file=sys.stderr)
    results = []
    for r in api.iter_predict(run, args.paths, **_inference(args)):
        results.append(r)
        if not args.json:
            print(f"{r.path}\tERROR\t{r.error}" if r.error
                  else f"{r.path}\t{r.label}\tP(dog)={r.p_dog:.4f}\tOOD={r.ood_score:.4f}")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    if args.csv:
        _write_csv(args.csv, results)
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{failed} of {len(results)} files could not be classified", file=sys.stderr)
    return EXIT_FAILED if failed or not results else EXIT_OK


def cmd_serve(args) -> int:
    _quiet_tensorflow()
    app = importlib.import_module("catsdogs.serve.app")
    settings = _api().load(args.run).config.inference.with_overrides(**_inference(args))
    app.run_server(args.run, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
                   max_files=args.max_files, settings=settings)
    return EXIT_OK


def cmd_export(args) -> int:
    _quiet_tensorflow()
    importlib.import_module("catsdogs.export").export_run(args.run, args.format)
    return EXIT_OK


def cmd_explain(args) -> int:
    result = _api().load(args.run).explain(args.image, out=args.out)
    print(f"{result.path}\t{result.label}\tP(dog)={result.p_dog:.4f}\tGrad-CAM → {args.out}")
    return EXIT_OK


# -- options -------------------------------------------------------------------------------

def _sizes(text: str) -> list[int]:
    """``"96,112"`` → ``[96, 112]``; ``"none"`` → ``[]`` (argparse type for --train-sizes)."""
    if text.strip().lower() == "none":
        return []
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected pixel sizes like 96,112") from None
    if any(s < 8 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be at least 8 pixels")
    return sizes


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _minutes(text: str) -> float:
    """argparse type for --time-budget: positive minutes, or ``none`` (0: fixed epochs)."""
    if text.strip().lower() in ("none", "0"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected minutes, e.g. 30") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive minutes, or none")
    return value


def _probability(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0 and 1")
    return value


_FLAG_TYPES = {"train_sizes": (_sizes, "PX[,PX…]"), "val_every": (_positive, "N"),
               "epochs": (_positive, "N"), "batch_size": (_positive, "N"),
               "image_size": (_positive, "PX"), "limit": (_positive, "N_PER_CLASS"),
               "seed": (int, "N"), "model": (str, "NAME"), "other": (str, "DIR"),
               "time_budget": (_minutes, "MINUTES"), "weights": (str, "none|imagenet|PATH"),
               "head_epochs": (int, "N"), "cache": (str, "auto|memory|disk"),
               "cache_memory_gb": (float, "GIB")}
"""argparse type and metavar of each per-setting ``train`` flag (others: ``str``)."""


def _progress_flag(p) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (one line per epoch instead)")


def _inference_flags(p) -> None:
    """``--engine``, ``--threshold`` and ``--tta/--no-tta``: per-call inference settings."""
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="inference engine (default: the run's, auto): auto uses "
                        "RUN/model.tflite or RUN/model.onnx from `catsdogs export` when up to "
                        "date, else model.keras; tflite-int8 only when asked")
    p.add_argument("--threshold", type=_probability, metavar="P",
                   help="P(dog) at or above which a photo is a dog (default: the run's, 0.5)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time flips: average P(dog) over the photo and its mirror image "
                        "(default: the run's preset)")


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="check or download a photo folder",
                          description="Check or download a labelled photo folder.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check", help="scan a folder: counts, unreadable files, duplicates",
        description="Scan a labelled folder without training: counts per class, every unreadable "
                    "file with its reason, exact duplicates. Exit 0 if usable.")
    check.add_argument("dir", help="folder with cat/ and dog/ sub-folders, or cat.N.jpg/dog.N.jpg")
    check.add_argument("--report", metavar="FILE.json", help="also write a JSON report")
    _progress_flag(check)
    check.set_defaults(func=cmd_data_check)
    dl = data_sub.add_parser(
        "download", help="download Microsoft's Kaggle Cats and Dogs photos",
        description="Download kagglecatsanddogs_5340.zip (~790 MB) with a progress bar, verify "
                    "it, and extract PetImages/. An interrupted download resumes.")
    dl.add_argument("--to", default="data", help="target folder (default: %(default)s)")
    dl.add_argument("--url", default=PETIMAGES_URL, help="archive URL (default: Microsoft's)")
    dl.add_argument("--sha256", default=PETIMAGES_SHA256,
                    help="expected SHA-256 of the archive ('' to skip the check)")
    _progress_flag(dl)
    dl.set_defaults(func=cmd_data_download)


def _add_train(sub) -> None:
    tr = sub.add_parser(
        "train", help="train a model and evaluate it on the held-out test split",
        description="Scan, deduplicate, split 80/10/10 (seeded, stratified), train with "
                    "checkpoints, and evaluate once on the test split. Everything goes into the "
                    "run folder.")
    tr.add_argument("--data", metavar="DIR", help="labelled photo folder")
    tr.add_argument("--out", metavar="RUN", required=True, help="run folder to create")
    tr.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="recipe (default: %(default)s; baseline = the classic tutorial net)")
    for f in cli_fields():  # one option per TrainConfig field that has a help text
        kind, metavar = _FLAG_TYPES.get(f.name, (str, f.name.upper()))
        tr.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind,
                        metavar=metavar, help=f"{f.metadata['help']} (default: the preset's)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any other setting of TrainConfig (e.g. learning_rate=0.003, "
                         "augmentation=crop_flip, threshold=0.6); repeatable")
    tr.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from its last completed epoch")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    tr.add_argument("--workers", metavar="HOST:PORT,…",
                    help="train on several machines: every worker's address, the chief first; "
                         "run the same command on each with its --worker-index "
                         "(default: a TF_CONFIG set by a launcher, else this machine alone; "
                         "see docs/distributed.md)")
    tr.add_argument("--worker-index", type=int, default=0, metavar="I",
                    help="this machine's place in --workers (0 = the chief, which writes the "
                         "run folder; default: %(default)s)")
    _progress_flag(tr)
    tr.set_defaults(func=cmd_train)


def _add_models(sub) -> None:
    mo = sub.add_parser(
        "models", help="list the models train can build, with their size and cost",
        description="List every model name --model accepts: the size it is built at by "
                    "default (pixels), trainable parameters, forward GFLOPs per photo at that "
                    "size, and pretrained weights: 'imagenet (cached)' when Keras' cache "
                    "($KERAS_HOME/models, default ~/.keras/models) holds its ImageNet file, "
                    "'none (ours)' for our own from-scratch models.")
    mo.add_argument("--json", metavar="FILE", help="also write the list as JSON")
    mo.set_defaults(func=cmd_models)


def _add_evaluate_predict(sub) -> None:
    ev = sub.add_parser(
        "evaluate", help="recompute metrics and plots for a run",
        description="Recompute metrics, plots and report for the run's test split, or with "
                    "--data for every readable photo of another labelled folder "
                    "(written to RUN/eval-<name>/). The Keras model is used unless --engine "
                    "names an export.")
    ev.add_argument("run", metavar="RUN", help="run folder")
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--data", metavar="DIR", help="evaluate on this labelled folder instead")
    which.add_argument("--other-data", metavar="DIR",
                       help="measure how well the photos of this folder of non-pet photos are "
                            "rejected as 'other' (neither a cat nor a dog), against the test "
                            "split's cats and dogs (written to RUN/eval-<name>/)")
    _inference_flags(ev)
    _progress_flag(ev)
    ev.set_defaults(func=cmd_evaluate)
    pr = sub.add_parser(
        "predict", help="classify photos",
        description="Classify photos (files or folders). Prints path, label (cat, dog, or "
                    "other: neither a cat nor a dog), P(dog) and the OOD score per photo; exit "
                    "code 1 if any file could not be read.")
    pr.add_argument("run", metavar="RUN", help="run folder with model.keras")
    pr.add_argument("paths", metavar="PATH", nargs="+", help="photos or folders")
    fmt = pr.add_mutually_exclusive_group()
    fmt.add_argument("--csv", metavar="FILE", help="also write results to a CSV file")
    fmt.add_argument("--json", action="store_true", help="print results as JSON")
    _inference_flags(pr)
    pr.set_defaults(func=cmd_predict)


def _add_serve(sub) -> None:
    sv = sub.add_parser(
        "serve", help="serve a web page and a JSON API for classifying photos",
        description="Start a FastAPI app (uvicorn) for a trained run: a web page at /, the API "
                    "at /api/v1/*, its documentation at /docs.")
    sv.add_argument("run", metavar="RUN", help="run folder with model.keras")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                    help="largest accepted request body, in MB (default: %(default)s)")
    sv.add_argument("--max-files", type=int, default=20, metavar="N",
                    help="most photos per request (default: %(default)s)")
    _inference_flags(sv)
    sv.set_defaults(func=cmd_serve)


def _add_export_explain(sub) -> None:
    xp = sub.add_parser(
        "export", help="export a trained model to ONNX or LiteRT for faster inference",
        description="Write RUN/model.onnx (ONNX Runtime) or RUN/model.tflite (LiteRT), check "
                    "that it gives the same P(dog) as model.keras (within 1e-4) on noise and "
                    "validation photos, and record it in RUN/export.json. predict and serve "
                    "then use it (--engine auto). --format tflite-int8 writes "
                    "RUN/model.int8.tflite (int8 weights, dynamic-range quantization: faster, "
                    "P(dog) off by a few hundredths), kept only if it makes at most 0.5%% of "
                    "the validation photos more mistakes than model.keras; use it with "
                    "--engine tflite-int8.")
    xp.add_argument("run", metavar="RUN", help="run folder with model.keras")
    xp.add_argument("--format", choices=sorted(EXPORT_FILES), default="tflite",
                    help="export format (default: %(default)s)")
    xp.set_defaults(func=cmd_export)
    ex = sub.add_parser(
        "explain", help="Grad-CAM heatmap of why the model decided",
        description="Classify one photo and write a Grad-CAM heatmap overlay (PNG).")
    ex.add_argument("run", metavar="RUN", help="run folder with model.keras")
    ex.add_argument("image", metavar="IMAGE", help="photo to explain")
    ex.add_argument("--out", default="heatmap.png", help="output PNG (default: %(default)s)")
    ex.set_defaults(func=cmd_explain)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``catsdogs`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="catsdogs",
        description="Train, evaluate and use a CNN that tells cats from dogs.",
        epilog="Example: catsdogs train --data PetImages --out runs/pets && "
               "catsdogs predict runs/pets photo.jpg")
    parser.add_argument("--version", action="version", version=f"catsdogs {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data, _add_train, _add_models, _add_evaluate_predict, _add_serve,
                _add_export_explain):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CatsDogsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(exc, TrainingInterrupted) else EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
