"""Scaling benchmark: one worker on 2 cores against two workers on 1 core each.

Both runs train the same recipe (``--preset``, ``--epochs`` fixed, no time budget) with the same
global batch B (default: twice the preset's batch, so each of the two workers trains the
preset's own batch, as ``catsdogs train --workers`` does) and the same peak learning rate (the
preset's): the single worker with ``--batch-size B``,
each of the two workers (``catsdogs train --workers …``, pinned with ``taskset`` to one core,
talking over 127.0.0.1) with ``B / 2`` and half the learning rate, which the linear scaling
rule doubles again (docs/distributed.md). Measured: training photos/s (train-split photos ×
epochs / the epochs' own seconds in ``history.csv``, validation included for both), the whole
command's wall time, scaling efficiency = two-worker photos/s ÷ one-worker photos/s (the
two-worker run has the same 2 cores in all), and each run's test accuracy.

Writes ``--out``/scaling.json and scaling.md. Usage::

    python benchmarks/scaling.py [--data ../shared/data/PetImages] [--preset fast] [--epochs 9]
        [--batch-size B]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from run import _cpu_flags, _cpu_name, write_results

from catsdogs.config import make_config
from catsdogs.distributed import local_workers

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")


def launch(cores: str, args: list[str], log: str) -> subprocess.Popen:
    """``catsdogs train ARGS`` pinned to ``cores`` (taskset), output to ``log``."""
    cmd = ["taskset", "-c", cores, sys.executable, "-m", "catsdogs.cli", "train", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def summarise(run: str, seconds: float) -> dict:
    """Test accuracy, epochs and training photos/s of a finished run folder."""
    history = list(csv.DictReader(open(os.path.join(run, "history.csv"))))
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    n_train = sum(1 for r in csv.DictReader(open(os.path.join(run, "splits.csv")))
                  if r["split"] == "train")
    epoch_seconds = sum(float(r["seconds"]) for r in history)
    return {"test_accuracy": metrics["accuracy"], "roc_auc": metrics.get("roc_auc"),
            "epochs": len(history), "train_photos": n_train,
            "epoch_seconds": epoch_seconds,
            "photos_per_second": n_train * len(history) / epoch_seconds,
            "wall_seconds": seconds}


def run_one(data: str, work: str, preset: str, epochs: int, batch: int, extra: list[str]
            ) -> dict:
    run, log = os.path.join(work, "one"), os.path.join(work, "one.log")
    t0 = time.perf_counter()
    proc = launch("0,1", ["--data", data, "--out", run, "--preset", preset, "--epochs",
                          str(epochs), "--batch-size", str(batch), "--no-progress", *extra], log)
    if proc.wait() != 0:
        raise SystemExit(f"one-worker run failed, see {log}")
    return summarise(run, time.perf_counter() - t0)


def run_two(data: str, work: str, preset: str, epochs: int, batch: int, lr: float,
            extra: list[str]) -> dict:
    run = os.path.join(work, "two")
    workers = local_workers(2)
    t0 = time.perf_counter()
    procs = [launch(str(i), ["--data", data, "--out", run, "--preset", preset, "--epochs",
                             str(epochs), "--batch-size", str(batch // 2), "--set",
                             f"learning_rate={lr / 2}", "--workers", workers,
                             "--worker-index", str(i),
                             "--no-progress", *extra], os.path.join(work, f"two-{i}.log"))
             for i in range(2)]
    if [p.wait() for p in procs] != [0, 0]:
        raise SystemExit(f"two-worker run failed, see {work}/two-*.log")
    return summarise(run, time.perf_counter() - t0)


def markdown(result: dict) -> str:
    one, two = result["one_worker"], result["two_workers"]
    rows = [("1 worker × 2 cores", one), ("2 workers × 1 core", two)]
    lines = [f"Scaling: `{result['command']}`, {result['cpu']} ({', '.join(result['cpu_flags'])}),"
             f" preset {result['preset']}, {result['epochs']} epochs, global batch "
             f"{result['global_batch']}", "",
             "| run | train photos/s | epochs' seconds | whole command, s | test accuracy |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['photos_per_second']:.0f} | {r['epoch_seconds']:.0f} | "
              f"{r['wall_seconds']:.0f} | {r['test_accuracy']:.4f} |" for name, r in rows]
    lines += ["", f"Scaling efficiency {result['efficiency']:.2f}; accuracy difference "
                  f"{100 * result['accuracy_difference']:+.2f} points (two − one)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(SHARED, "PetImages"))
    p.add_argument("--preset", default="fast")
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--batch-size", type=int,
                   help="global batch (even; default: 2 × the preset's batch)")
    p.add_argument("--limit", type=int, help="photos per class (smoke tests)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    data = os.path.abspath(args.data)
    preset = make_config(args.preset)
    lr, batch = preset.learning_rate, args.batch_size or 2 * preset.batch_size
    work = tempfile.mkdtemp(prefix="scaling-")  # kept when a run fails, for its logs
    extra = ["--limit", str(args.limit)] if args.limit else []
    one = run_one(data, work, args.preset, args.epochs, batch, extra)
    two = run_two(data, work, args.preset, args.epochs, batch, lr, extra)
    shutil.rmtree(work, ignore_errors=True)
    result = {"command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
              "cpu": _cpu_name(), "cpu_flags": _cpu_flags(), "preset": args.preset,
              "epochs": args.epochs, "global_batch": batch, "learning_rate": lr,
              "one_worker": one, "two_workers": two,
              "efficiency": two["photos_per_second"] / one["photos_per_second"],
              "accuracy_difference": two["test_accuracy"] - one["test_accuracy"]}
    write_results(args.out, "scaling", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
