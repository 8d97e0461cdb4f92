"""The project's own exceptions.

Every error a user can cause (a bad photo, a bad folder, a bad run folder) is a
:class:`CatsDogsError`; the command line prints its message on one line, without a traceback, and
exits non-zero.
"""

from __future__ import annotations

import os


def display_path(path: str | bytes | os.PathLike) -> str:
    """Return ``path`` as printable text, even when the file name is not valid UTF-8.

    Undecodable bytes are shown as ``\\xNN`` escapes, so a message never fails to print.
    """
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


class CatsDogsError(Exception):
    """Base class of every error caused by user input (files, folders, run folders, options)."""


class ImageError(CatsDogsError):
    """A photo could not be used.

    Attributes:
        path: the file (or upload name) that failed, as printable text.
        reason: a short human-readable reason, e.g. ``"empty file (0 bytes)"``.
    """

    def __init__(self, path: str | bytes | os.PathLike | None, reason: str):
        self.path = display_path(path) if path is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(CatsDogsError):
    """A folder of photos cannot be used (missing, empty, only one class, …)."""


class RunError(CatsDogsError):
    """A run folder is missing, incomplete, or would be overwritten."""


class ConfigError(CatsDogsError, ValueError):
    """A setting has a bad name or value (an unknown preset, model, engine, …)."""


class TrainingInterrupted(RunError):
    """Training was stopped by Ctrl-C; the last completed epoch is saved and can be resumed.

    Args:
        run: the run folder.
        backup: the folder that holds the resumable state.
    """

    def __init__(self, run: str, backup: str):
        super().__init__(f"interrupted; the last completed epoch is saved in {backup}. "
                         f"Resume with: catsdogs train --out {run} --resume")
