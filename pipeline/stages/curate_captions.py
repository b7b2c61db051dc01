"""Stage ``curate_captions``: one caption file (PickScore-25k style) -> one prompt table.

    python -m pipeline.stages.curate_captions --source captions.txt --out test.parquet \
        [--lines 0:2048] [--min-words 6] --stats test_stats.json

Input: one caption per line, as Flow-GRPO's and Multi-GRPO's PickScore-25k files. Each
caption is normalised (surrounding whitespace stripped, inner runs of whitespace collapsed)
and kept, or dropped as ``empty``, ``too_short`` (fewer than ``--min-words`` words: the
PickScore-25k split was built from Pick-a-Pic captions of at least 6 words) or ``duplicate``
(the same normalised caption earlier in the file). Columns: ``line_id`` (0-based line in the
source), ``prompt``, and the empty ``text`` / ``color`` targets that the OCR-Color-10 tables
carry (no OCR or colour reward applies), ``source`` = ``caption``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa

from pipeline.data.prompt_files import read_prompt_lines, write_curated
from pipeline.runtime import tracking

SCHEMA = pa.schema(
    [("line_id", pa.int64())] + [(name, pa.string()) for name in ("prompt", "text", "color", "source")]
)


def normalise(caption: str) -> str:
    return " ".join(caption.split())


def curate_captions(lines: list[str], line_ids: range, min_words: int) -> tuple[pa.Table, dict]:
    """Keep or drop ``lines[i]`` for every ``i`` in ``line_ids``; the table and statistics."""
    drops, seen = Counter(), set()
    rows = {name: [] for name in SCHEMA.names}
    for line_id in line_ids:
        caption = normalise(lines[line_id])
        reason = (
            "empty"
            if not caption
            else "too_short"
            if len(caption.split()) < min_words
            else "duplicate"
            if caption in seen
            else None
        )
        if reason:
            drops[reason] += 1
            continue
        seen.add(caption)
        for name, value in zip(SCHEMA.names, (line_id, caption, "", "", "caption"), strict=True):
            rows[name].append(value)
    table = pa.Table.from_pydict(rows, schema=SCHEMA)
    stats = {
        "kind": "captions",
        "lines": len(line_ids),
        "line_start": line_ids.start,
        "line_stop": line_ids.stop,
        "kept": table.num_rows,
        "dropped": dict(sorted(drops.items())),
        "by_source": {"caption": table.num_rows},
        "min_words": min_words,
    }
    return table, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="caption file, one per line")
    parser.add_argument("--out", type=Path, required=True, help="output Parquet file")
    parser.add_argument("--lines", default=None, help="START:STOP, the 0-based lines to curate")
    parser.add_argument("--min-words", type=int, default=0, help="drop captions with fewer words")
    parser.add_argument("--stats", type=Path, default=None, help="JSON file of counts")
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.min_words < 0:
        raise SystemExit(f"--min-words {args.min_words}: must be >= 0")

    lines, line_ids = read_prompt_lines(args.source, args.lines)
    stage_config = {"lines": args.lines, "min_words": args.min_words, "source": args.source.name}
    with tracking.stage_run(args, stage_config) as run:
        table, stats = curate_captions(lines, line_ids, args.min_words)
        counts = write_curated(table, stats, args.source, args.out, args.stats)
        run.log_metrics(counts)
    print(f"curated {stats['lines']} captions -> {stats['kept']} rows; dropped {stats['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
