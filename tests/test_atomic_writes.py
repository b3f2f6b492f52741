"""Atomic writes: a file appears whole or not at all, with the mode a plain write would give it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.utils import atomic_path, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_new_file_written_atomically_has_the_mode_a_plain_write_gives_under_the_same_umask(
        tmp_path: Path, umask: int):
    old_mask = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old_mask)
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("mode", [0o600, 0o755])
def test_replacing_a_file_atomically_keeps_its_mode_as_rewriting_it_in_place_would(tmp_path: Path, mode: int):
    target = tmp_path / "kept.txt"
    target.write_text("old")
    target.chmod(mode)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == mode


def test_a_block_that_raises_leaves_the_old_file_and_no_temporary_behind(tmp_path: Path):
    target = tmp_path / "kept.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))
