"""catsdogs: train, evaluate, explain and serve a CNN that tells cats from dogs.

The Python API (for notebooks and scripts; the ``catsdogs`` command is a thin layer over it)::

    import catsdogs
    run = catsdogs.train(data="PetImages", out="runs/pets", preset="fast")
    run = catsdogs.load("runs/pets")
    run.predict(["cat.jpg"])      # [Prediction(path='cat.jpg', label='cat', p_dog=0.03, ...)]

Class order is fixed everywhere in the package: ``cat = 0``, ``dog = 1``; the model's single
sigmoid output is P(dog).

Importing ``catsdogs`` (before TensorFlow) sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless it is already
set: see :data:`ONEDNN_DEFAULT`. It does not import TensorFlow itself: the API names below are
loaded on first use (PEP 562 module ``__getattr__``), so ``catsdogs --help`` and the light
modules (:mod:`catsdogs.config`, :mod:`catsdogs.runfolder`) start fast.
"""

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING

from catsdogs.constants import CLASSES, VERSION

__version__ = VERSION

ONEDNN_DEFAULT = "1"
"""Value given to ``TF_ENABLE_ONEDNN_OPTS`` when the user has not set it.

Why: TensorFlow's Linux wheels turn their oneDNN kernels on by default only on CPUs with
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``DefaultOneDnnPolicy`` in
``tensorflow/core/util/util.cc``; RFC "Enabling oneDNN operations for x86 CPUs",
tensorflow/community#400); an AVX2-only CPU gets the Eigen kernels, which trained our models
about 2.7× slower (docs/recipes.md). Where the CPU has those features oneDNN is on anyway. It
must be set before TensorFlow is imported, which is why it lives here;
``TF_ENABLE_ONEDNN_OPTS=0`` turns it off.
"""

_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", ONEDNN_DEFAULT)

_API = ("train", "load", "models", "Run", "Prediction", "Explanation", "TrainConfig",
        "InferenceSettings")
"""Public names served from :mod:`catsdogs.api` on first use."""

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from catsdogs.api import (  # noqa: F401
        Explanation,
        InferenceSettings,
        Prediction,
        Run,
        TrainConfig,
        load,
        models,
        train,
    )


def __getattr__(name: str):
    """Load the API (and with it TensorFlow) only when one of its names is first used."""
    if name in _API:
        return getattr(_importlib.import_module("catsdogs.api"), name)
    raise AttributeError(f"module 'catsdogs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["CLASSES", "ONEDNN_DEFAULT", "__version__", *_API]
