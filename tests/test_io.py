"""Atomic writes: a crash mid-write leaves the old file and no temporary file behind."""

from __future__ import annotations

import os

import pytest

from catsdogs.io import atomic_path, atomic_write_bytes, atomic_write_text


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half of the new con")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_writes_replace_the_file_and_leave_nothing_else(tmp_path):
    target = tmp_path / "sub" / "data.bin"
    target.parent.mkdir()
    atomic_write_bytes(target, b"\x00\x01")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    atomic_write_text(target, "caf\u00e9")
    assert target.read_bytes() == "caf\u00e9".encode()
    assert os.listdir(target.parent) == ["data.bin"]
