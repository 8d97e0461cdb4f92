"""Where a training step's time goes on this CPU, natively and with oneDNN limited to AVX2.

For each configuration (default: this CPU as the flags guess ``precision=auto``, untimed:
bfloat16 where it has native bfloat16 instructions; and an emulated
AVX2-only CPU — ``ONEDNN_MAX_CPU_ISA=AVX2`` with float32, as issue 20 asks), a child process
builds the preset's model exactly as ``catsdogs train`` does (``build_for_training``) and trains
it on synthetic batches at one training size:

1. **time**: seconds per optimizer step of each compiled call (``steps_per_execution`` steps,
   timed by a callback; the median counts; the epoch's end is not timed);
2. **TensorFlow ops**: the TensorFlow profiler's trace of a few calls, op time summed by op type
   over the executor threads (gradient ops marked ``(grad)``);
3. **oneDNN primitives**: a second child with ``ONEDNN_VERBOSE=1``: time per primitive kind,
   propagation kind and implementation (e.g. ``jit:avx2`` against ``brg_conv_fwd:avx2``),
   and the slowest convolution shapes.

The shares within one configuration are robust; absolute times move ±15 % with this kind of
VM's load, so compare configurations only within one run of this script.

Writes ``--out``/profile.json and profile.md. Usage::

    python benchmarks/profile_step.py [--preset default] [--size 112] [--calls 12]
        [--configs native,avx2]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from run import _cpu_flags, _cpu_name, write_results

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    # name: (environment, --set precision=…)
    "native": ({}, "auto"),
    "avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32"),
}
"""Profiled configurations: ``avx2`` emulates an AVX2-only CPU on an AVX-512 one (oneDNN's
documented ``ONEDNN_MAX_CPU_ISA``, https://oneapi-src.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html)."""


VERBOSE_CALLS = 2
"""Timed compiled calls in the ``ONEDNN_VERBOSE`` child: every kernel call prints a line."""


def _child(args: argparse.Namespace) -> None:
    """Build, time and (unless ``--no-trace``) profile one configuration; print one JSON line.

    TensorFlow is imported here, in the child only: oneDNN reads ``ONEDNN_MAX_CPU_ISA`` and
    ``ONEDNN_VERBOSE`` once, when TensorFlow loads it, so each configuration needs a process
    whose environment is set before that import."""
    import keras
    import numpy as np
    import tensorflow as tf

    from catsdogs import training
    from catsdogs.config import make_config
    from catsdogs.data.pipeline import pipeline_options

    cfg = make_config(args.preset, precision=args.precision)
    model, precision = training.build_for_training(cfg, steps_per_epoch=1000)
    batch, per_call = cfg.batch_size, cfg.steps_per_execution
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 8, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 2, (batch * 8, *model.output.shape[1:])).astype("float32")
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat().prefetch(2)
          .with_options(pipeline_options()))

    class CallTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):  # once per compiled call
            self.times.append(time.perf_counter())

    model.fit(ds, steps_per_epoch=2 * per_call, epochs=1, verbose=0)  # traces
    timer = CallTimes()
    model.fit(ds, steps_per_epoch=(args.calls + 1) * per_call, epochs=1, verbose=0,
              callbacks=[timer])
    step_ms = [1000 * d / per_call for d in np.diff(timer.times)]
    result = {"precision": precision, "batch_size": batch, "steps_per_execution": per_call,
              "ms_per_step_calls": [round(t, 1) for t in step_ms],
              "ms_per_step": round(float(np.median(step_ms)), 1)}
    result["photos_per_second"] = round(1000 * batch / result["ms_per_step"], 1)
    if not args.no_trace:
        logdir = tempfile.mkdtemp(prefix="catsdogs-profile-")
        traced = 4 * per_call
        tf.profiler.experimental.start(logdir)
        model.fit(ds, steps_per_epoch=traced, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        result["tf_ops"] = _tf_op_times(logdir, traced)
        shutil.rmtree(logdir, ignore_errors=True)
    print("PROFILE " + json.dumps(result), flush=True)


def _tf_op_times(logdir: str, steps: int) -> list[dict]:
    """Op time per step by op type, summed over TensorFlow's executor threads, from the
    profiler's XSpace file (``*.xplane.pb``) under ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0],
              "rb") as fh:
        space.ParseFromString(fh.read())
    total: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names[event.metadata_id].name  # "scope/…/op_name:OpType"
                if ":" not in name or name.startswith("ExecutorState"):
                    continue
                op = name.rsplit(":", 1)[1] + (" (grad)" if "/gradient_tape/" in name else "")
                total[op] += event.duration_ps / 1e9  # picoseconds → ms
    return _shares({op: ms / steps for op, ms in total.items()}, "op")


def _onednn_times(lines: list[str], steps: int) -> tuple[list[dict], list[dict]]:
    """oneDNN verbose ``exec`` lines → time per step by (primitive, propagation kind,
    implementation), and the ten slowest convolution shapes.

    Verbose format (oneDNN v3, ``ONEDNN_VERBOSE=1``): ``onednn_verbose,v1,primitive,exec,cpu,
    KIND,IMPLEMENTATION,PROP,memory descriptors,attributes,auxiliary,problem,TIME_MS``.
    """
    by_kind: collections.Counter = collections.Counter()
    by_shape: collections.Counter = collections.Counter()
    for line in lines:
        f = line.strip().split(",")
        if len(f) < 13 or f[2] != "primitive" or f[3] != "exec":
            continue
        kind, impl, prop, problem, ms = f[5], f[6], f[7], f[-2], float(f[-1])
        by_kind[f"{kind} {prop} [{impl}]"] += ms
        if kind == "convolution":
            by_shape[f"{prop} [{impl}] {problem}"] += ms
    kinds = _shares({k: v / steps for k, v in by_kind.items()}, "primitive")
    shapes = _shares({k: v / steps for k, v in by_shape.items()}, "convolution")[:10]
    return kinds, shapes


def _shares(ms: dict[str, float], key: str) -> list[dict]:
    total = sum(ms.values()) or 1.0
    return [{key: k, "ms_per_step": round(v, 2), "share": round(v / total, 4)}
            for k, v in sorted(ms.items(), key=lambda kv: -kv[1])]


def _run_child(args: argparse.Namespace, config: str, verbose: bool) -> tuple[dict, list[str]]:
    env, precision = CONFIGS[config]
    env = {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--preset", args.preset,
           "--size", str(args.size), "--calls", str(args.calls), "--precision", precision]
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
        cmd[cmd.index("--calls") + 1] = str(VERBOSE_CALLS)
        cmd.append("--no-trace")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.splitlines()
    found = [json.loads(line[8:]) for line in lines if line.startswith("PROFILE ")]
    if proc.returncode or not found:
        sys.exit(f"profile_step: the {config} child failed (exit {proc.returncode}):\n"
                 f"{proc.stderr[-2000:]}")
    return found[0], lines


def profile(args: argparse.Namespace, config: str) -> dict:
    """One configuration: timing and TensorFlow ops, then oneDNN primitives."""
    result, _ = _run_child(args, config, verbose=False)
    timed, lines = _run_child(args, config, verbose=True)
    # Every compiled call the verbose child ran: 2 that trace, 1 untimed, VERBOSE_CALLS timed.
    steps = (3 + VERBOSE_CALLS) * timed["steps_per_execution"]
    isa = next((line.split("isa:", 1)[1] for line in lines if ",info,cpu,isa:" in line), "")
    result["onednn_isa"] = isa.strip()
    result["onednn"], result["onednn_convolutions"] = _onednn_times(lines, steps)
    return {"config": config, "environment": CONFIGS[config][0], "size": args.size, **result}


def table(results: list[dict], top: int = 8) -> str:
    """Markdown: one summary row per configuration, then its largest ops and primitives."""
    out = ["| configuration | oneDNN ISA | precision | ms/step (median) | photos/s |",
           "| --- | --- | --- | --- | --- |"]
    out += [f"| {r['config']} ({r['size']} px, batch {r['batch_size']}) | {r['onednn_isa']} | "
            f"{r['precision']} | {r['ms_per_step']} | {r['photos_per_second']} |"
            for r in results]
    for r in results:
        for key, label in (("tf_ops", "op"), ("onednn", "primitive")):
            out += ["", f"{r['config']}: {label}s (ms per step, share)", "",
                    f"| {label} | ms/step | share |", "| --- | --- | --- |"]
            out += [f"| {row[label]} | {row['ms_per_step']} | {100 * row['share']:.1f} % |"
                    for row in r.get(key, [])[:top]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--size", type=int, default=112, help="training side, pixels")
    p.add_argument("--calls", type=int, default=12, help="timed compiled calls")
    p.add_argument("--configs", default="native,avx2",
                   help=f"comma-separated, of {sorted(CONFIGS)}")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--no-trace", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    configs = args.configs.split(",")
    if unknown := sorted(set(configs) - set(CONFIGS)):
        p.error(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results = [profile(args, c) for c in configs]
    write_results(args.out, "profile", {
        "date": started, "machine": {"cpu": _cpu_name(), "cpu_flags": _cpu_flags(),
                                     "cores": os.cpu_count()},
        "preset": args.preset, "configs": results}, table(results))


if __name__ == "__main__":
    main()
