"""The ``catsdogs`` command line: ``catsdogs data|train|evaluate|predict …``.

Every sub-command has ``--help``. Errors caused by input (bad folder, bad run folder, bad photo)
print one line, ``error: …``, and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

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
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cmd_data_check(args) -> int:
    from catsdogs.data.scan import scan_folder, summary_lines
    from catsdogs.errors import DataError

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
    from catsdogs.data.download import download_petimages

    target = download_petimages(args.to, url=args.url, sha256=args.sha256,
                                progress=not args.no_progress)
    print(f"PetImages ready: {target}\nTrain with: catsdogs train --data {target} --out runs/pets")
    return EXIT_OK


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


def cmd_train(args) -> int:
    from catsdogs.config import make_config
    from catsdogs.errors import RunError
    from catsdogs.train import train

    if not args.resume and not args.data:
        raise RunError("--data DIR is required (unless --resume continues an existing run)")
    train_sizes = args.train_sizes
    if train_sizes is None and args.image_size:
        train_sizes = []  # --image-size alone: train and classify at that size
    cfg = make_config(args.preset, data=args.data and os.path.abspath(args.data), out=args.out,
                      epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
                      train_sizes=train_sizes, limit=args.limit, seed=args.seed,
                      val_every=args.val_every)
    train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from catsdogs.evaluate import evaluate_run

    evaluate_run(args.run, data=args.data, progress=not args.no_progress)
    return EXIT_OK


def cmd_predict(args) -> int:
    import csv

    from catsdogs.predict import Predictor, predict_paths

    predictor = Predictor.from_run(args.run, engine=args.engine)
    if not args.json:
        print(f"# {args.run}: {predictor.engine_name} engine", file=sys.stderr)
    results = []
    for r in predict_paths(predictor, args.paths):
        results.append(r)
        if not args.json:
            if r.error:
                print(f"{r.path}\tERROR\t{r.error}")
            else:
                print(f"{r.path}\t{r.label}\tP(dog)={r.p_dog:.4f}")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    if args.csv:
        import io

        from catsdogs.io import atomic_write_text
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "p_dog", "p_cat", "error"])
        for r in results:
            w.writerow([r.path, r.label or "", "" if r.p_dog is None else f"{r.p_dog:.6f}",
                        "" if r.p_cat is None else f"{r.p_cat:.6f}", r.error or ""])
        atomic_write_text(args.csv, buf.getvalue())
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{failed} of {len(results)} files could not be classified", file=sys.stderr)
    return EXIT_FAILED if failed or not results else EXIT_OK


def cmd_serve(args) -> int:
    from catsdogs.serve.app import run_server

    run_server(args.run, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
               max_files=args.max_files, engine=args.engine)
    return EXIT_OK


def cmd_export(args) -> int:
    from catsdogs.export import export_run

    export_run(args.run, args.format)
    return EXIT_OK


def cmd_explain(args) -> int:
    from catsdogs.explain import explain_to_file

    result = explain_to_file(args.run, args.image, args.out)
    print(f"{result.path}\t{result.label}\tP(dog)={result.p_dog:.4f}\tGrad-CAM → {args.out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from catsdogs import __version__

    parser = argparse.ArgumentParser(
        prog="catsdogs",
        description="Train, evaluate and use a CNN that tells cats from dogs.",
        epilog="Example: catsdogs train --data PetImages --out runs/pets && "
               "catsdogs predict runs/pets photo.jpg")
    parser.add_argument("--version", action="version", version=f"catsdogs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from catsdogs.export import ENGINES, EXPORT_FILES

    def engine_flag(p):
        p.add_argument("--engine", choices=ENGINES, default="auto",
                       help="inference engine: auto (default) uses RUN/model.tflite or "
                            "RUN/model.onnx from `catsdogs export` when up to date, else "
                            "model.keras; tflite-int8 (faster, slightly different P(dog)) "
                            "only when asked")

    def progress_flag(p):
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars (one line per epoch instead)")

    data = sub.add_parser("data", help="check or download a photo folder",
                          description="Check or download a labelled photo folder.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check", help="scan a folder: counts, unreadable files, duplicates",
        description="Scan a labelled folder without training: counts per class, every unreadable "
                    "file with its reason, exact duplicates. Exit 0 if usable.")
    check.add_argument("dir", help="folder with cat/ and dog/ sub-folders, or cat.N.jpg/dog.N.jpg")
    check.add_argument("--report", metavar="FILE.json", help="also write a JSON report")
    progress_flag(check)
    check.set_defaults(func=cmd_data_check)

    from catsdogs.data.download import PETIMAGES_SHA256, PETIMAGES_URL

    dl = data_sub.add_parser(
        "download", help="download Microsoft's Kaggle Cats and Dogs photos",
        description="Download kagglecatsanddogs_5340.zip (~790 MB) with a progress bar, verify "
                    "it, and extract PetImages/. An interrupted download resumes.")
    dl.add_argument("--to", default="data", help="target folder (default: %(default)s)")
    dl.add_argument("--url", default=PETIMAGES_URL, help="archive URL (default: Microsoft's)")
    dl.add_argument("--sha256", default=PETIMAGES_SHA256,
                    help="expected SHA-256 of the archive ('' to skip the check)")
    progress_flag(dl)
    dl.set_defaults(func=cmd_data_download)

    from catsdogs.config import PRESETS

    tr = sub.add_parser(
        "train", help="train a model and evaluate it on the held-out test split",
        description="Scan, deduplicate, split 80/10/10 (seeded, stratified), train with "
                    "checkpoints, and evaluate once on the test split. Everything goes into the "
                    "run folder.")
    tr.add_argument("--data", metavar="DIR", help="labelled photo folder")
    tr.add_argument("--out", metavar="RUN", required=True, help="run folder to create")
    tr.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="recipe (default: %(default)s; baseline = the classic tutorial net)")
    tr.add_argument("--epochs", type=int, metavar="N", help="override the preset's epochs")
    tr.add_argument("--batch-size", type=int, metavar="N", help="override the batch size")
    tr.add_argument("--image-size", type=int, metavar="PX",
                    help="override the size the model classifies at (alone, it also trains at "
                         "that size)")
    tr.add_argument("--train-sizes", type=_sizes, metavar="PX[,PX…]",
                    help="progressive resizing: training sizes, the epochs split evenly between "
                         "them in order (e.g. 96,112); 'none' trains at --image-size")
    tr.add_argument("--limit", type=int, metavar="N_PER_CLASS",
                    help="use at most N photos per class (demos, tests)")
    tr.add_argument("--val-every", type=_positive, metavar="N",
                    help="validate every N epochs and after the last (default: the preset's; "
                         "1 for baseline and quick, 2 for fast and default)")
    tr.add_argument("--seed", type=int, metavar="N", help="random seed (default 1337)")
    tr.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from its last completed epoch")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    progress_flag(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="recompute metrics and plots for a run",
        description="Recompute metrics, plots and report for the run's test split, or with "
                    "--data for every readable photo of another labelled folder "
                    "(written to RUN/eval-<name>/).")
    ev.add_argument("run", metavar="RUN", help="run folder")
    ev.add_argument("--data", metavar="DIR", help="evaluate on this labelled folder instead")
    progress_flag(ev)
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser(
        "predict", help="classify photos",
        description="Classify photos (files or folders). Prints path, label and P(dog) per "
                    "photo; exit code 1 if any file could not be read.")
    pr.add_argument("run", metavar="RUN", help="run folder with model.keras")
    pr.add_argument("paths", metavar="PATH", nargs="+", help="photos or folders")
    fmt = pr.add_mutually_exclusive_group()
    fmt.add_argument("--csv", metavar="FILE", help="also write results to a CSV file")
    fmt.add_argument("--json", action="store_true", help="print results as JSON")
    engine_flag(pr)
    pr.set_defaults(func=cmd_predict)

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
    engine_flag(sv)
    sv.set_defaults(func=cmd_serve)

    xp = sub.add_parser(
        "export", help="export a trained model to ONNX or LiteRT for faster inference",
        description="Write RUN/model.onnx (ONNX Runtime) or RUN/model.tflite (LiteRT), check "
                    "that it gives the same P(dog) as model.keras (within 1e-4) on noise and "
                    "validation photos, and record it in RUN/export.json. predict and serve "
                    "then use it (--engine auto). --format tflite-int8 writes "
                    "RUN/model.int8.tflite (int8 weights, dynamic-range quantization: about 2x "
                    "the batch throughput, P(dog) off by a few hundredths), kept only if it "
                    "makes at most 0.5%% of the validation photos more mistakes than "
                    "model.keras; use it with --engine tflite-int8.")
    xp.add_argument("run", metavar="RUN", help="run folder with model.keras")
    xp.add_argument("--format", choices=sorted(EXPORT_FILES), default="tflite",
                    help="export format (default: %(default)s, the fastest on our benchmark)")
    xp.set_defaults(func=cmd_export)

    ex = sub.add_parser(
        "explain", help="Grad-CAM heatmap of why the model decided",
        description="Classify one photo and write a Grad-CAM heatmap overlay (PNG).")
    ex.add_argument("run", metavar="RUN", help="run folder with model.keras")
    ex.add_argument("image", metavar="IMAGE", help="photo to explain")
    ex.add_argument("--out", default="heatmap.png", help="output PNG (default: %(default)s)")
    ex.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    from catsdogs.errors import CatsDogsError

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_tensorflow()
    try:
        return args.func(args)
    except CatsDogsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if type(exc).__name__ != "TrainingInterrupted" else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
