"""catsdogs: train, evaluate, explain and serve a CNN that tells cats from dogs.

Class order is fixed everywhere in the package: ``cat = 0``, ``dog = 1``; the model's single
sigmoid output is P(dog).
"""

__version__ = "0.1.0"

CLASSES: tuple[str, str] = ("cat", "dog")
"""Class names in label order: index 0 is ``cat``, index 1 is ``dog`` (the positive class)."""
