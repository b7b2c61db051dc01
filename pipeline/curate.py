"""Stage ``curate_dataset``: one OCR prompt file -> one OCR-Color-10 Parquet table.

    python -m pipeline.curate --source prompts.txt --out test.parquet [--seed N] [--lines 0:555]

Input: one prompt per line with a double-quoted text span (Flow-GRPO's OCR format). Each
prompt is kept verbatim (``allowed``), given an appended colour sentence (``augmented``) or
dropped, by the rules in :mod:`pipeline.curation`. Augmented colours come from a seeded,
balanced draw: every colour ends up (as nearly as possible) equally frequent in the output,
counting the colours that ``allowed`` prompts already name. Drops are counted by reason in
``--stats``. The same input and seed give a byte-identical file.
"""

from __future__ import annotations

import argparse
import codecs
import math
import random
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa

from pipeline import io, tracking
from pipeline.curation import augment, decide
from pipeline.palette import COLOR_NAMES, PALETTE

COLUMNS = ("line_id", "prompt", "text", "color", "source", "color_r", "color_g", "color_b")


def balanced_colors(n_draws: int, already: Counter, seed: int) -> list[str]:
    """Draw ``n_draws`` colour names so that ``already`` plus the draws is as even as possible.

    Each colour's quota is the even share of the final total minus what it already has; the
    quotas are pooled, shuffled with ``seed`` and the first ``n_draws`` taken.
    """
    total = n_draws + sum(already.values())
    share = math.ceil(total / len(COLOR_NAMES))
    pool = [c for c in COLOR_NAMES for _ in range(max(0, share - already[c]))]
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[:n_draws]


def parse_line_range(spec: str | None, n_lines: int) -> range:
    """``"a:b"`` -> ``range(a, b)`` clipped to the file; ``None`` -> every line."""
    if spec is None:
        return range(n_lines)
    try:
        start, stop = (int(part) if part else None for part in spec.split(":"))
    except ValueError:
        raise SystemExit(f"--lines {spec!r}: expected START:STOP, e.g. 0:555") from None
    return range(n_lines)[slice(start, stop)]


def curate(prompts: list[str], line_ids: range, seed: int) -> tuple[pa.Table, dict]:
    """Curate ``prompts[i]`` for every ``i`` in ``line_ids``; return the table and statistics."""
    decisions = [(i, prompts[i], decide(prompts[i])) for i in line_ids]
    drops = Counter(d.reason for _, _, d in decisions if d.action == "drop")
    allowed = Counter(d.color for _, _, d in decisions if d.action == "allowed")
    n_augmented = sum(d.action == "augmented" for _, _, d in decisions)
    draws = iter(balanced_colors(n_augmented, allowed, seed))

    rows = {name: [] for name in COLUMNS}
    for line_id, prompt, decision in decisions:
        if decision.action == "drop":
            continue
        colour = decision.color if decision.action == "allowed" else next(draws)
        if decision.action == "augmented":
            prompt = augment(prompt, decision.text, colour)
        r, g, b = PALETTE[colour]
        for name, value in zip(
            COLUMNS, (line_id, prompt, decision.text, colour, decision.action, r, g, b), strict=True
        ):
            rows[name].append(value)
    schema = pa.schema(
        [("line_id", pa.int64())]
        + [(name, pa.string()) for name in ("prompt", "text", "color", "source")]
        + [(name, pa.uint8()) for name in ("color_r", "color_g", "color_b")]
    )
    table = pa.Table.from_pydict(rows, schema=schema)
    stats = {
        "lines": len(line_ids),
        "line_start": line_ids.start,
        "line_stop": line_ids.stop,
        "kept": table.num_rows,
        "dropped": dict(sorted(drops.items())),
        "by_source": dict(sorted(Counter(rows["source"]).items())),
        "by_color": {c: rows["color"].count(c) for c in COLOR_NAMES},
        "seed": seed,
    }
    return table, stats


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="prompt file, one per line")
    parser.add_argument("--out", type=Path, required=True, help="output Parquet file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the colour draw")
    parser.add_argument("--lines", default=None, help="START:STOP, the 0-based lines to curate")
    parser.add_argument("--stats", type=Path, default=None, help="JSON file of counts")
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    prompts = read_prompts(args.source)
    line_ids = parse_line_range(args.lines, len(prompts))
    stage_config = {"seed": args.seed, "lines": args.lines, "source": args.source.name}
    with tracking.stage_run(args, stage_config) as run:
        table, stats = curate(prompts, line_ids, args.seed)
        stats["source_file"] = args.source.name
        io.write_parquet(args.out, table)
        if args.stats is not None:
            io.write_json(args.stats, stats)
        run.log_metrics(
            {"lines": stats["lines"], "kept": stats["kept"]}
            | {f"dropped.{reason}": n for reason, n in stats["dropped"].items()}
            | {f"source.{name}": n for name, n in stats["by_source"].items()}
        )
    print(f"curated {stats['lines']} lines -> {stats['kept']} rows; dropped {stats['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
