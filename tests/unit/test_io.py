"""Atomic writes: new files follow the umask, and a failed write names its file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

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


# A process whose file size limit is 64 KiB (RLIMIT_FSIZE; SIGXFSZ ignored so that the write
# fails with EFBIG instead of killing it), as a full disk fails a write part-way: a real
# error from safetensors' own writer, which does not name the file.
WRITE_PAST_THE_LIMIT = """
import resource, signal, sys, torch
from pipeline.models.weights import save_weights
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
save_weights(__import__("pathlib").Path(sys.argv[1]), {"w": torch.zeros(1 << 16)})
"""


def test_a_failed_safetensors_write_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "run" / "weights.safetensors"
    result = subprocess.run(
        [sys.executable, "-c", WRITE_PAST_THE_LIMIT, str(target)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("OSError: [Errno 27]") and f"(writing {target})" in last, result.stderr
    assert list(target.parent.iterdir()) == []  # no temporary file, no partial target
