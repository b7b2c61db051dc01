"""Prompt files as the curation stages read them: one prompt per line, numbered as the file
numbers them, optionally restricted to a range of lines."""

from __future__ import annotations

import codecs
from pathlib import Path

import pyarrow as pa

from pipeline.runtime import io


def parse_line_range(spec: str | None, n_lines: int) -> range:
    """``"a:b"`` -> ``range(a, b)`` clipped to the file; ``None`` -> every line."""
    if spec is None:
        return range(n_lines)
    try:
        start, stop = (int(part) if part else None for part in spec.split(":"))
    except ValueError:
        raise SystemExit(f"--lines {spec!r}: expected START:STOP, e.g. 0:555") from None
    return range(n_lines)[slice(start, stop)]


def read_prompts(path: Path) -> list[str]:
    """The lines of prompt file ``path``: one prompt per ``\\n`` (a ``\\r`` before it dropped).

    Only those end a line, so that line ids match the file's own numbering and the published
    split's: ``str.splitlines`` would also split at U+2028, NEL, form feed and vertical tab
    inside a prompt and shift every later id. A UTF-8 byte-order mark at the start is dropped;
    bytes that are not UTF-8 stop the stage naming the line and the byte offset.
    """
    if not path.is_file():
        raise SystemExit(f"--source {path}: no such file")
    data = path.read_bytes()
    offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    raw_lines = data[offset:].split(b"\n")
    if raw_lines[-1] == b"":  # the newline that ends the last line
        raw_lines.pop()
    prompts = []
    for line_id, raw in enumerate(raw_lines):
        try:
            prompts.append(raw.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as error:
            raise SystemExit(
                f"--source {path}: line {line_id} (0-based) is not UTF-8: {error.reason} at byte "
                f"{offset + error.start} of the file"
            ) from None
        offset += len(raw) + 1
    return prompts


def read_prompt_lines(path: Path, spec: str | None) -> tuple[list[str], range]:
    """The prompts of file ``path`` and the line ids ``spec`` (``"START:STOP"`` or None: every
    line) selects among them, as a curation stage curates them."""
    prompts = read_prompts(path)
    return prompts, parse_line_range(spec, len(prompts))


def write_curated(table: pa.Table, stats: dict, source: Path, out: Path, stats_out: Path | None) -> dict:
    """Write a curated split (``out``, Parquet) and its statistics (``stats_out``, JSON, with the
    source file's name); returns the counts a curation run logs (lines, kept, drops by reason)."""
    stats["source_file"] = source.name
    io.write_parquet(out, table)
    if stats_out is not None:
        io.write_json(stats_out, stats)
    return {"lines": stats["lines"], "kept": stats["kept"]} | {
        f"dropped.{reason}": n for reason, n in stats["dropped"].items()
    }
