"""Names every module shares and nothing else: the package version and the class order.

It imports nothing, so any module (light or heavy) may import it without creating a cycle.
"""

VERSION = "0.1.0"
"""The package version (``catsdogs.__version__``)."""

CLASSES: tuple[str, str] = ("cat", "dog")
"""Class names in label order: index 0 is ``cat``, index 1 is ``dog`` (the positive class).
The model's single sigmoid output is P(dog)."""
