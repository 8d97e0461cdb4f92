"""catsdogs: train, evaluate, explain and serve a CNN that tells cats from dogs.

Class order is fixed everywhere in the package: ``cat = 0``, ``dog = 1``; the model's single
sigmoid output is P(dog).

Importing ``catsdogs`` (before TensorFlow) turns on TensorFlow's oneDNN kernels, which
TensorFlow itself leaves off on x86 CPUs without AVX-512 VNNI/BF16, AVX-VNNI or AMX, unless
``TF_ENABLE_ONEDNN_OPTS`` is already set: see :data:`ONEDNN_DEFAULT`.
"""

import os as _os

__version__ = "0.1.0"

CLASSES: tuple[str, str] = ("cat", "dog")
"""Class names in label order: index 0 is ``cat``, index 1 is ``dog`` (the positive class)."""

ONEDNN_DEFAULT = "1"
"""Value given to ``TF_ENABLE_ONEDNN_OPTS`` when the user has not set it.

Why: TensorFlow's Linux wheels turn their oneDNN kernels on by default only on CPUs with
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``DefaultOneDnnPolicy`` in
``tensorflow/core/util/util.cc``; RFC "Enabling oneDNN operations for x86 CPUs",
tensorflow/community#400); an AVX2-only CPU gets the Eigen kernels. On this project's AVX2-only
2-core AMD EPYC VM (TensorFlow 2.21, float32), one training step of the ``fast`` preset at 64 px
(batch 64) took ~245 ms with Eigen and ~92 ms with oneDNN, and a 2048² float32 matmul ran at
137 vs 169 GFLOP/s. Where the CPU has those features oneDNN is on anyway, so this changes
nothing there. It must be set before TensorFlow is imported, which is why it lives here;
``TF_ENABLE_ONEDNN_OPTS=0`` turns it off.
"""

_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", ONEDNN_DEFAULT)
