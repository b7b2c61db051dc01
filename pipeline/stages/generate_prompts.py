"""Stage ``generate_prompts``: the default study's own OCR-style prompt source.

    python -m pipeline.stages.generate_prompts --spec datasets/sources/ocr_scenes.yaml \
        --config-json '{...}' --train train.txt --test test.txt --vocab vocab.json

Writes prompt files in Flow-GRPO's OCR format (one prompt per line, the target text in the
first double-quoted span) so that they go through the same curation as Flow-GRPO's files.
Quoted texts are single upper-case words whose length the config bounds (what the mini model
can learn to render on 2 cores). A seeded share of the words is held out of training
entirely: test prompts draw from every word, train prompts only from the rest, so the report
can separate seen and unseen words (``vocab.json`` lists both).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config.types import GeneratorConfig
from pipeline.data.generator import generate, load_spec
from pipeline.runtime import io, tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--config-json", required=True, help="the dataset.source.generator slice")
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--vocab", type=Path, required=True)
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw = json.loads(args.config_json)
    cfg = GeneratorConfig(**raw)
    spec = load_spec(args.spec)
    with tracking.stage_run(args, raw) as run:
        train, test, vocab = generate(spec, cfg)
        io.write_text(args.train, "\n".join(train) + "\n")
        io.write_text(args.test, "\n".join(test) + "\n")
        io.write_json(args.vocab, vocab)
        run.log_metrics(
            {"train_words": len(vocab["train_words"]), "heldout_words": len(vocab["heldout_words"])}
        )
    print(
        f"{len(train)} train / {len(test)} test prompts; {len(vocab['train_words'])} train "
        f"words, {len(vocab['heldout_words'])} held out"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
