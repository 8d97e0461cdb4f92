"""What this machine and this Python have: native bfloat16, the memory left to use, and the
software versions a run records in ``config.json``."""

from __future__ import annotations

import os
import platform

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
    """``"auto"`` → ``"mixed_bfloat16"`` on CPUs with native bfloat16, else ``"float32"``.

    Raises:
        ConfigError: an unknown precision.
    """
    if precision == "auto":
        return "mixed_bfloat16" if cpu_has_bf16() else "float32"
    if precision not in ("float32", "mixed_bfloat16"):
        raise ConfigError(f"unknown precision {precision!r}; choose auto, float32 or "
                          "mixed_bfloat16")
    return precision


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
