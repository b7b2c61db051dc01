"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or a kill leaves either the old file or the new one, never a half-written file, so
Snakemake and resumed runs can trust whatever exists.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; rename it onto ``target`` on success.

    The file gets the permissions of any new file (0666 less the umask), set after the writer
    is done: ``mkstemp`` creates it 0600, and a writer that replaces the file (safetensors'
    ``save_file``) does too. An OS error while writing (a full disk) names ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        follow_umask(tmp_path)
        os.replace(tmp_path, target)
    except OSError as error:
        raise type(error)(error.errno, f"{error.strerror or error} (writing {target})") from error
    finally:
        tmp_path.unlink(missing_ok=True)


def write_safetensors(target: str | os.PathLike, tensors: dict) -> None:
    """``tensors`` (name -> CPU tensor) as a safetensors file at ``target``, atomically.

    safetensors reports an OS error (a full disk: ``os error 28``) as its own error, without the
    path: it becomes an :class:`OSError` with that errno, naming ``target``."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(target) as tmp:
        try:
            save_file(tensors, tmp)
        except SafetensorError as error:
            code = re.search(r"os error (\d+)", str(error))
            raise OSError(int(code.group(1)) if code else None, str(error)) from error


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions of a new file: 0666 less the umask."""
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj: object) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(target: str | os.PathLike, table: pa.Table) -> None:
    """Write ``table`` so that equal tables give byte-identical files (no pandas index,
    fixed compression, no creation time in the metadata)."""
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd", store_schema=False)
