"""What this machine and this Python have: native bfloat16, and the software versions a run
records in ``config.json``."""

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


def software_versions() -> dict[str, str]:
    """Versions of Python, catsdogs and the main libraries, plus ``TF_ENABLE_ONEDNN_OPTS`` (which
    kernels TensorFlow ran; see :data:`catsdogs.ONEDNN_DEFAULT`)."""
    return {"catsdogs": VERSION, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "pillow": PIL.__version__,
            "matplotlib": matplotlib.__version__, "platform": platform.platform(),
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")}
