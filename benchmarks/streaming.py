"""catsdogs benchmark: peak memory against the number of photos with ``--cache disk``.

    python benchmarks/streaming.py --data ../shared/data/PetImages          # make bench-streaming
    python benchmarks/streaming.py --data ../shared/data/PetImages \\
        --sizes 200,400 --originals 100 --compare-limit 100 --compare-epochs 1  # a smoke run

1. **Curve.** Builds a photo folder larger than PetImages from its photos: each readable photo
   plus variants written as new JPEG files (mirrored; shifted by 6 px; re-encoded at quality
   70; mirrored and shifted), so the scan's exact-duplicate removal keeps them. Folders of
   ``--sizes`` photos (default 25,000, 50,000 and 100,000) take the originals first, then all
   the mirrored photos, and so on (the first 25,000 are PetImages itself). Each is trained for
   ``--epochs`` (1) epoch(s) with ``--cache disk`` (``--cache-memory-gb 2`` is passed as well;
   it decides only ``--cache auto``) by the real ``catsdogs train`` in a subprocess, the
   ``quick`` net at 128 px (49,152 bytes per decoded photo), to record its peak RSS, wall time
   and training speed. The goal: RSS flat while the decoded photos grow 4×. Variants of one
   photo can land in train and test, so the curve's test accuracies mean nothing.
2. **Memory against disk.** PetImages trained twice with one preset and a fixed number of
   epochs (``--compare-preset fast``, 9 epochs), ``--cache memory`` and ``--cache disk``:
   test accuracy, peak RSS, training speed. The two train on the same batches in the same
   order (tests/test_cache.py); the augmentation's random draws are not reproducible from run
   to run (TensorFlow's stateful random ops in a parallel ``map``), so the accuracies differ
   by run-to-run noise only.

Writes ``benchmarks/results/streaming.json`` and ``streaming.md`` (also printed); keys are
documented in ``benchmarks/README.md``. Peak RSS comes from ``os.wait4`` (the child's own
``ru_maxrss``; ``RUSAGE_CHILDREN`` would report the largest child so far). A benchmark, not a
test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from run import _cpu_name, write_results  # noqa: E402 (benchmarks/run.py, beside this script)

from catsdogs.data.images import load_image  # noqa: E402 (after the path is set)
from catsdogs.data.scan import find_labelled_files  # noqa: E402
from catsdogs.errors import ImageError  # noqa: E402

VARIANTS = ("flip", "shift", "q70", "flipshift")
"""New JPEG files made from each photo, in the order folders take them after the originals."""
CLASS_FOLDERS = ("Cat", "Dog")
SIZE = 128
"""Training side of the curve's runs, pixels."""


def make_variant(pixels: np.ndarray, variant: str) -> tuple[np.ndarray, int]:
    """One variant of ``(h, w, 3) uint8`` pixels and its JPEG quality."""
    if variant == "flip":
        return pixels[:, ::-1], 90
    if variant == "shift":
        return pixels[6:, 6:], 90
    if variant == "q70":
        return pixels, 70
    return pixels[:-6, ::-1][:, 6:], 85  # flipshift


def write_variants(job: tuple[str, str, list[str]]) -> int:
    """Write ``variants`` of the photo ``source`` as ``<target>.<variant>.jpg`` (temporary name,
    then rename: a killed build leaves no half file); return how many were written (0 for an
    unreadable photo: the scan skips it anyway)."""
    source, target, variants = job
    todo = [v for v in variants if not os.path.exists(f"{target}.{v}.jpg")]
    if not todo:
        return 0
    try:
        pixels = load_image(source)
    except ImageError:
        return 0
    for v in todo:
        out, quality = make_variant(pixels, v)
        tmp = f"{target}.{v}.jpg.tmp"
        Image.fromarray(np.ascontiguousarray(out)).save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, f"{target}.{v}.jpg")
    return len(todo)


def originals(data: str, limit: int | None) -> list[tuple[str, int]]:
    """The photo folder's ``(path, label)`` files, classes interleaved (cat, dog, cat, …) so
    that any prefix is balanced; at most ``limit``."""
    by_class = [[(p, c) for p, label in find_labelled_files(data)[1] if label == c]
                for c in (0, 1)]
    short = min(len(g) for g in by_class)
    mixed = [item for pair in zip(by_class[0][:short], by_class[1][:short], strict=True)
             for item in pair]
    mixed += by_class[0][short:] + by_class[1][short:]
    return mixed[:limit]


def build_folders(data: str, work: str, sizes: list[int], limit: int | None) -> dict:
    """Write the variants the largest size needs (once: existing files are kept) and one folder
    of symbolic links per size, ``work/photos-<size>/{Cat,Dog}/``.

    Returns:
        ``{"originals", "variants_written", "build_seconds", "folders": {size: path}}``.
    """
    t0 = time.perf_counter()
    base = originals(data, limit)
    need = -(-max(sizes) // len(base)) - 1  # variants per photo
    if need > len(VARIANTS):
        raise SystemExit(f"{max(sizes)} photos need {need} variants of each of the "
                         f"{len(base)} originals; at most {len(VARIANTS)}")
    variants = VARIANTS[:need]
    jobs = []
    for path, label in base:
        stem = os.path.splitext(os.path.basename(path))[0]
        target = os.path.join(work, "variants", CLASS_FOLDERS[label], stem)
        jobs.append((path, target, list(variants)))
    for c in CLASS_FOLDERS:
        os.makedirs(os.path.join(work, "variants", c), exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        written = sum(pool.map(write_variants, jobs, chunksize=64))
    order = [(path, label, os.path.basename(path)) for path, label in base]
    for v in variants:  # not those of unreadable originals
        order += [(f"{target}.{v}.jpg", label, f"{os.path.basename(target)}.{v}.jpg")
                  for (_, target, _), (_, label) in zip(jobs, base, strict=True)
                  if os.path.exists(f"{target}.{v}.jpg")]
    folders = {}
    for size in sizes:
        folder = os.path.join(work, f"photos-{size}")
        shutil.rmtree(folder, ignore_errors=True)
        for c in CLASS_FOLDERS:
            os.makedirs(os.path.join(folder, c))
        for path, label, name in order[:size]:
            os.symlink(os.path.abspath(path), os.path.join(folder, CLASS_FOLDERS[label], name))
        folders[size] = folder
    return {"originals": len(base), "variants": list(variants), "variants_written": written,
            "build_seconds": round(time.perf_counter() - t0, 1), "folders": folders}


def train(data: str, out: str, args: list[str]) -> dict:
    """Run ``catsdogs train`` (``--data data --out out`` plus ``args``) as a child process;
    return its wall seconds, peak RSS (its own ``ru_maxrss``, ``os.wait4``), its output's
    ``Cache:`` lines and a summary of the run folder."""
    cmd = [sys.executable, "-m", "catsdogs.cli", "train", "--data", data, "--out", out,
           "--no-progress", "--overwrite", *args]
    print("$ catsdogs " + " ".join(cmd[3:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.path.join(HERE, "..", "src")}
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        log.seek(0)
        output = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train failed:\n{output[-6000:]}")
    return {"command": "catsdogs " + " ".join(cmd[3:]), "wall_seconds": round(wall, 1),
            "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
            "cache_lines": [line for line in output.splitlines() if line.startswith("Cache:")],
            **summarise(out)}


def summarise(run: str) -> dict:
    """From the run folder: photos, training speed, stage times and test accuracy."""
    def read(name):
        with open(os.path.join(run, name)) as fh:
            return json.load(fh)

    config, scan, timings, metrics = (read(n) for n in ("config.json", "scan.json",
                                                         "timings.json", "metrics.json"))
    with open(os.path.join(run, "history.csv")) as fh:
        history = list(csv.DictReader(fh))
    with open(os.path.join(run, "splits.csv")) as fh:
        n_train = sum(r["split"] == "train" for r in csv.DictReader(fh))
    train_seconds = sum(float(r["seconds"]) for r in history)
    side = max(config["train_sizes"] or [config["image_size"]])
    return {"cache": config["cache_choice"]["mode"], "photos": scan["n_readable"],
            "n_train": n_train, "epochs": len(history),
            "decoded_bytes": scan["n_readable"] * side * side * 3, "cache_side": side,
            "train_seconds": round(train_seconds, 1),
            "train_photos_per_s": round(n_train * len(history) / train_seconds, 1),
            "data_seconds": timings["data_seconds"], "fit_seconds": timings["fit_seconds"],
            "total_seconds": timings["total_seconds"],
            "test_accuracy": metrics["accuracy"], "test_n": metrics["n"]}


def slope(points: list[dict]) -> float | None:
    """Least-squares bytes of peak RSS per extra photo (None with fewer than two sizes)."""
    if len(points) < 2:
        return None
    x = np.array([p["photos"] for p in points], float)
    y = np.array([p["peak_rss_bytes"] for p in points], float)
    return float(np.polyfit(x, y, 1)[0])


def markdown(result: dict) -> str:
    gib = 2**30
    lines = [f"catsdogs streaming benchmark — {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores, {result['date']}", "",
             f"Curve: `--cache disk`, quick net at {SIZE} px, {result['epochs']} epoch(s); "
             f"folder of {result['augmented']['originals']:,} originals plus variants "
             f"({', '.join(result['augmented']['variants']) or 'none'}).", "",
             "| photos | train photos | cache | decoded photos GiB | peak RSS GiB | "
             "train photos/s | scan s | wall s |", "| --- | --- | --- | --- | --- | --- | --- "
             "| --- |"]
    for p in result["curve"]:
        lines.append(f"| {p['photos']:,} | {p['n_train']:,} | {p['cache']} | "
                     f"{p['decoded_bytes'] / gib:.2f} | {p['peak_rss_bytes'] / gib:.2f} | "
                     f"{p['train_photos_per_s']:.0f} | {p['data_seconds']:.0f} | "
                     f"{p['wall_seconds']:.0f} |")
    if result["rss_bytes_per_photo"] is not None:
        lines += ["", f"Peak RSS grows by {result['rss_bytes_per_photo']:,.0f} bytes per photo "
                      f"(least squares), against {SIZE * SIZE * 3:,} per decoded photo held in "
                      "memory."]
    if result["compare"]:
        lines += ["", f"PetImages, `--preset {result['compare_preset']}`, "
                      f"{result['compare'][0]['epochs']} epochs, memory against disk:", "",
                  "| cache | test accuracy | peak RSS GiB | train photos/s | wall s |",
                  "| --- | --- | --- | --- | --- |"]
        for r in result["compare"]:
            lines.append(f"| {r['cache']} | {r['test_accuracy']:.4f} | "
                         f"{r['peak_rss_bytes'] / gib:.2f} | {r['train_photos_per_s']:.0f} | "
                         f"{r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


NO_LIMIT = ["--set", "limit=none"]
"""Train on every photo of the folder (``quick`` alone keeps 2,500 per class)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                       "PetImages"))
    parser.add_argument("--sizes", default="25000,50000,100000",
                        help="photos per folder of the curve (comma-separated)")
    parser.add_argument("--originals", type=int, default=None,
                        help="use only the first N photos of --data (a smoke run)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each curve run")
    parser.add_argument("--cache-memory-gb", default="2")
    parser.add_argument("--compare-preset", default="fast")
    parser.add_argument("--compare-epochs", type=int, default=9)
    parser.add_argument("--compare-limit", type=int, default=None,
                        help="photos per class of the memory-vs-disk runs (default: all)")
    parser.add_argument("--no-compare", action="store_true", help="the curve only")
    parser.add_argument("--work", default=None,
                        help="folder for the variants and run folders, kept (reused by the "
                             "next run); default: a temporary folder, deleted at the end")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    data = os.path.abspath(args.data)
    if not os.path.isdir(data):
        raise SystemExit(f"no photo folder at {data}; pass --data")
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(
        prefix="catsdogs-streaming-")
    os.makedirs(work, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    augmented = build_folders(data, work, sizes, args.originals)
    print(f"{augmented['originals']:,} originals, {augmented['variants_written']:,} variants "
          f"written in {augmented['build_seconds']:.0f} s", flush=True)
    curve = []
    for size in sizes:
        curve.append(train(augmented["folders"][size], os.path.join(work, f"runs/disk-{size}"),
                           ["--preset", "quick", *NO_LIMIT, "--image-size",
                            str(SIZE), "--epochs", str(args.epochs), "--cache", "disk",
                            "--cache-memory-gb", args.cache_memory_gb]))
    compare = []
    if not args.no_compare:
        limit = ["--limit", str(args.compare_limit)] if args.compare_limit else NO_LIMIT
        for mode in ("memory", "disk"):
            compare.append(train(data, os.path.join(work, f"runs/compare-{mode}"),
                                 ["--preset", args.compare_preset, "--time-budget", "none",
                                  "--epochs", str(args.compare_epochs), *limit,
                                  "--cache", mode]))
    for row in (*curve, *compare):
        row["command"] = row["command"].replace(work, "WORK")
        row["cache_lines"] = [line.replace(work, "WORK") for line in row["cache_lines"]]
    augmented["folders"] = {k: v.replace(work, "WORK") for k, v in augmented["folders"].items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(),
                          "platform": platform.platform(), "memory_bytes": _memory()},
              "epochs": args.epochs, "augmented": augmented, "curve": curve,
              "rss_bytes_per_photo": slope(curve), "compare_preset": args.compare_preset,
              "compare": compare}
    write_results(args.out, "streaming", result, markdown(result))
    if args.work:
        print(f"Variants and run folders kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _memory() -> int | None:
    """The machine's physical memory, bytes (``os.sysconf``; None where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
