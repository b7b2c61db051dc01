"""Atomic writes: new files follow the umask, and a failed write names its file."""

from __future__ import annotations

import errno
import os

import pyarrow as pa
import pytest

from pipeline.runtime import io


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "x")
        io.write_parquet(tmp_path / "t.parquet", pa.table({"x": [1]}))
        os.umask(0o077)
        io.write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.pq, "write_table", full)
    target = tmp_path / "rewards.parquet"
    with pytest.raises(OSError, match=r"No space left on device \(writing .*rewards.parquet\)") as caught:
        io.write_parquet(target, pa.table({"x": [1]}))
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
