"""What this machine and this Python have: native bfloat16 (and whether it pays), the memory
left to use, and the software versions a run records in ``config.json``."""

from __future__ import annotations

import os
import platform
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


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists native bfloat16 instructions (``avx512_bf16``/``amx_bf16``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


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
    """

    precision: str
    reason: str
    size: int | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None

    def line(self) -> str:
        """The one line training prints."""
        return f"Precision: {self.precision} ({self.reason})"


def choose_precision(precision: str, step_seconds: Callable[[str], float], size: int,
                     batch_size: int, timed: bool = True) -> PrecisionChoice:
    """Resolve a new run's :attr:`~catsdogs.config.TrainConfig.precision`: ``float32`` and
    ``mixed_bfloat16`` as given; ``auto`` → ``float32`` on a CPU without native bfloat16
    (:func:`cpu_has_bf16`; nothing is timed), else the faster of the two by a timed training
    step, bfloat16 only when :data:`BFLOAT16_MARGIN` times faster; without ``timed`` (several
    workers, which must all train alike), the CPU flags' guess.

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
    seconds = {p: float(step_seconds(p)) for p in ("float32", "mixed_bfloat16")}
    bf16 = seconds["float32"] >= BFLOAT16_MARGIN * seconds["mixed_bfloat16"]
    rates = ", ".join(f"{p} {batch_size / s:.0f}" for p, s in seconds.items())
    reason = (f"auto: timed photos/s at {size} px: {rates}; bfloat16 only when "
              f"{BFLOAT16_MARGIN:g}× faster")
    return PrecisionChoice("mixed_bfloat16" if bf16 else "float32", reason, size, seconds,
                           batch_size)


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
