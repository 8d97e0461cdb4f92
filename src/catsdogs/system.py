"""What this machine and this Python have: native bfloat16 (and whether it pays), the memory
left to use, and the software versions a run records in ``config.json``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import matplotlib
import numpy
import PIL
import sklearn
import tensorflow as tf

from catsdogs.constants import VERSION
from catsdogs.errors import ConfigError
from catsdogs.io import atomic_write_text


def _cpuinfo() -> str:
    """The text of /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists native bfloat16 instructions (``avx512_bf16``/``amx_bf16``)."""
    flags = _cpuinfo()
    return " avx512_bf16" in flags or " amx_bf16" in flags


PRECISION_CACHE_FILE = "precision.json"
"""Where :func:`choose_precision` keeps its timings between runs, in :func:`cache_dir`."""


def cache_dir() -> str | None:
    """The folder where catsdogs keeps what it measured about this machine between runs (not
    run results): ``$CATSDOGS_CACHE_DIR``, else ``$XDG_CACHE_HOME/catsdogs``, else
    ``~/.cache/catsdogs`` (the XDG Base Directory convention). ``CATSDOGS_CACHE_DIR=`` (empty)
    turns the cache off: None."""
    if "CATSDOGS_CACHE_DIR" in os.environ:
        return os.environ["CATSDOGS_CACHE_DIR"] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "catsdogs")


def machine_key() -> dict:
    """What a training step's speed depends on besides the net: the CPU (model and flags, from
    the first processor of /proc/cpuinfo), the cores this process may use, the oneDNN settings
    (``ONEDNN_MAX_CPU_ISA`` emulates an older CPU) and the TensorFlow and Keras versions."""
    first = _cpuinfo().split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":")
                                                   for line in first.splitlines())}
    cpu = {k: fields.get(k, "") for k in ("vendor_id", "cpu family", "model", "model name")}
    flags = fields.get("flags", "")
    return {"cpu": cpu, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "onednn": [os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                       os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")],
            "tensorflow": tf.__version__, "keras": keras.__version__}


def _cache_entry(key: dict | None) -> tuple[str, str] | None:
    """(cache file, entry name) for ``key`` (the net timed, plus :func:`machine_key`); None
    without a key or with the cache turned off."""
    folder = cache_dir() if key is not None else None
    if folder is None:
        return None
    text = json.dumps({**machine_key(), **key}, sort_keys=True, default=str)
    return os.path.join(folder, PRECISION_CACHE_FILE), hashlib.sha256(text.encode()).hexdigest()


def _read_cache(file: str) -> dict:
    """The cache file's entries; empty when it is missing or unreadable (it is then re-timed
    and rewritten)."""
    try:
        with open(file, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _cached_seconds(where: tuple[str, str]) -> dict[str, float] | None:
    """The step seconds by precision in entry ``where`` (:func:`_cache_entry`), or None."""
    entry = _read_cache(where[0]).get(where[1])
    seconds = entry.get("step_seconds") if isinstance(entry, dict) else None
    if not isinstance(seconds, dict) or set(seconds) != {"float32", "mixed_bfloat16"}:
        return None
    try:
        return {p: float(s) for p, s in seconds.items()}
    except (TypeError, ValueError):
        return None


def _cache_seconds(where: tuple[str, str], key: dict, seconds: dict[str, float]) -> None:
    """Add ``seconds`` for ``key`` as entry ``where`` (:func:`_cache_entry`) of the cache
    file, atomically; a cache that cannot be written (a read-only home) is skipped: it only
    saves time."""
    entries = _read_cache(where[0])
    entries[where[1]] = {"key": key, "step_seconds": seconds,
                         "timed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        atomic_write_text(where[0], json.dumps(entries, indent=1, sort_keys=True, default=str))
    except OSError:
        pass


def resolve_precision(precision: str) -> str:
    """``"auto"`` → ``"mixed_bfloat16"`` on CPUs with native bfloat16, else ``"float32"``: the
    guess from the CPU flags alone, for callers that do not time (:func:`choose_precision`).

    Raises:
        ConfigError: an unknown precision.
    """
    if precision == "auto":
        return "mixed_bfloat16" if cpu_has_bf16() else "float32"
    if precision not in ("float32", "mixed_bfloat16"):
        raise ConfigError(f"unknown precision {precision!r}; choose auto, float32 or "
                          "mixed_bfloat16")
    return precision


BFLOAT16_MARGIN = 1.05
"""``precision="auto"`` trains in bfloat16 only when its measured step is at least this many
times faster than float32's: a tie goes to float32, which rounds nothing and needs no float32
copy of the model at the end. This kind of VM's speed moves 15–20 % between timings, so where
the two precisions are closer than that either may win (and either is then about as fast);
set the precision for bit-exact reruns."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The compute precision a run trains in, and why (``config.json``'s ``precision_choice``).

    Attributes:
        precision: ``"float32"`` or ``"mixed_bfloat16"``.
        reason: why, in words.
        size: training side the steps were timed at, pixels (None: nothing was timed).
        step_seconds: median seconds per training step of ``batch_size`` photos, by precision
            (empty: nothing was timed).
        batch_size: photos per timed step.
        cached: the step seconds are an earlier run's on this machine, from the cache
            (:func:`cache_dir`), not timed again.
    """

    precision: str
    reason: str
    size: int | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None
    cached: bool = False

    def line(self) -> str:
        """The one line training prints."""
        return f"Precision: {self.precision} ({self.reason})"


def choose_precision(precision: str, step_seconds: Callable[[str], float], size: int,
                     batch_size: int, timed: bool = True, key: dict | None = None
                     ) -> PrecisionChoice:
    """Resolve a new run's :attr:`~catsdogs.config.TrainConfig.precision`: ``float32`` and
    ``mixed_bfloat16`` as given; ``auto`` → ``float32`` on a CPU without native bfloat16
    (:func:`cpu_has_bf16`; nothing is timed), else the faster of the two by a timed training
    step, bfloat16 only when :data:`BFLOAT16_MARGIN` times faster; without ``timed`` (several
    workers, which must all train alike), the CPU flags' guess. With ``key``, the two timings
    are kept in :data:`PRECISION_CACHE_FILE` (in :func:`cache_dir`) under ``key`` and
    :func:`machine_key`, and a later run of the same net on the same machine and software
    reuses them instead of timing again (two builds and traces: about 20 s, a large share of a
    short budget); delete the file to time again.

    Native bfloat16 instructions do not make bfloat16 faster on every CPU: on a 2-core Intel
    Xeon with AVX512_BF16 and AVX512_FP16 but no AMX, ``default``'s float32 steps were 1.3–1.5×
    faster than its bfloat16 ones on synthetic batches, the opposite of an AMD EPYC with
    AVX512_BF16 (docs/benchmarks.md).

    Args:
        precision: ``"auto"``, ``"float32"`` or ``"mixed_bfloat16"``.
        step_seconds: seconds per training step in a precision (called once for each of the
            two, ``auto`` on a bfloat16 CPU only).
        size: the training side ``step_seconds`` times at, pixels (for the record).
        batch_size: photos per step (for the record and the printed photos/s).
        key: what ``step_seconds`` times (the net, batch, size; JSON-serialisable), for the
            cache; None: no cache.

    Raises:
        ConfigError: an unknown precision.
    """
    resolved = resolve_precision(precision)
    if precision != "auto":
        return PrecisionChoice(resolved, f"precision={precision} as set")
    if resolved == "float32":
        return PrecisionChoice("float32", "auto: no native bfloat16 (avx512_bf16, amx_bf16) "
                                          "on this CPU")
    if not timed:
        return PrecisionChoice(resolved, "auto: native bfloat16 on this CPU, untimed (several "
                                         "workers)")
    where = _cache_entry(key)
    seconds = _cached_seconds(where) if where else None
    cached = seconds is not None
    if not cached:
        seconds = {p: float(step_seconds(p)) for p in ("float32", "mixed_bfloat16")}
        if where:
            _cache_seconds(where, key, seconds)
    bf16 = seconds["float32"] >= BFLOAT16_MARGIN * seconds["mixed_bfloat16"]
    rates = ", ".join(f"{p} {batch_size / s:.0f}" for p, s in seconds.items())
    source = f" (by an earlier run on this machine, cached in {where[0]})" if cached else ""
    reason = (f"auto: timed photos/s at {size} px: {rates}{source}; bfloat16 only when "
              f"{BFLOAT16_MARGIN:g}× faster")
    return PrecisionChoice("mixed_bfloat16" if bf16 else "float32", reason, size, seconds,
                           batch_size, cached)


def _read_int(file: str) -> int | None:
    """The first word of ``file`` as an integer; None when the file is missing or holds no
    number (a cgroup's ``max``: no limit)."""
    try:
        with open(file) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cgroup_room(proc: str, cgroup: str) -> int | None:
    """Bytes left under this process's cgroup memory limit: limit − usage, of cgroup v2
    (``memory.max``, ``memory.current``) or v1 (``memory/…/memory.limit_in_bytes``,
    ``memory.usage_in_bytes``), in the process's own group (``/proc/self/cgroup``) or else at
    the root the container sees; None without a limit."""
    v2, v1 = [cgroup], [os.path.join(cgroup, "memory")]
    try:
        with open(os.path.join(proc, "self", "cgroup")) as fh:
            for line in fh:
                _, controllers, path = line.strip().split(":", 2)
                if controllers == "":
                    v2.insert(0, cgroup + path)
                elif "memory" in controllers.split(","):
                    v1.insert(0, os.path.join(cgroup, "memory") + path)
    except (OSError, ValueError):
        pass
    pairs = [(os.path.join(f, "memory.max"), os.path.join(f, "memory.current")) for f in v2]
    pairs += [(os.path.join(f, "memory.limit_in_bytes"), os.path.join(f, "memory.usage_in_bytes"))
              for f in v1]
    for limit_file, usage_file in pairs:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1 "none": ~2**63
            return max(0, limit - usage)
    return None


def available_memory_bytes(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes of memory this process may still use: the smaller of the kernel's estimate of
    memory available without swapping (``MemAvailable`` in ``/proc/meminfo``) and the room
    left under its cgroup memory limit (a container's ``--memory``); elsewhere (macOS,
    Windows) the physical memory (``os.sysconf``); None when none of these can be read.

    Args:
        proc, cgroup: where procfs and the cgroup file system are mounted (tests point them
            at a folder of fake files).
    """
    found = []
    try:
        with open(os.path.join(proc, "meminfo")) as fh:
            found += [int(line.split()[1]) * 1024 for line in fh
                      if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if (room := _cgroup_room(proc, cgroup)) is not None:
        found.append(room)
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def software_versions() -> dict[str, str]:
    """Versions of Python, catsdogs and the main libraries, plus ``TF_ENABLE_ONEDNN_OPTS`` (which
    kernels TensorFlow ran; see :data:`catsdogs.ONEDNN_DEFAULT`)."""
    return {"catsdogs": VERSION, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "pillow": PIL.__version__,
            "matplotlib": matplotlib.__version__, "platform": platform.platform(),
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")}
