"""Stage ``curate_dataset``: one OCR prompt file -> one OCR-Color-10 Parquet table.

    python -m pipeline.stages.curate_dataset --source prompts.txt --out test.parquet [--seed N]
        [--lines 0:555]

Input: one prompt per line with a double-quoted text span (Flow-GRPO's OCR format). Each
prompt is kept verbatim (``allowed``), given an appended colour sentence (``augmented``) or
dropped, by the rules in :mod:`pipeline.data.curation`. Augmented colours come from a seeded,
balanced draw: every colour ends up (as nearly as possible) equally frequent in the output,
counting the colours that ``allowed`` prompts already name. Drops are counted by reason in
``--stats``. The same input and seed give a byte-identical file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.data.curation import curate
from pipeline.data.prompt_files import read_prompt_lines, write_curated
from pipeline.runtime import tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="prompt file, one per line")
    parser.add_argument("--out", type=Path, required=True, help="output Parquet file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the colour draw")
    parser.add_argument("--lines", default=None, help="START:STOP, the 0-based lines to curate")
    parser.add_argument("--stats", type=Path, default=None, help="JSON file of counts")
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    prompts, line_ids = read_prompt_lines(args.source, args.lines)
    stage_config = {"seed": args.seed, "lines": args.lines, "source": args.source.name}
    with tracking.stage_run(args, stage_config) as run:
        table, stats = curate(prompts, line_ids, args.seed)
        counts = write_curated(table, stats, args.source, args.out, args.stats)
        run.log_metrics(counts | {f"source.{name}": n for name, n in stats["by_source"].items()})
    print(f"curated {stats['lines']} lines -> {stats['kept']} rows; dropped {stats['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
