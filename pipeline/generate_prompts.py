"""Stage ``generate_prompts``: the default study's own OCR-style prompt source.

    python -m pipeline.generate_prompts --spec datasets/sources/ocr_scenes.yaml \
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
import random
import sys
from pathlib import Path

import yaml

from pipeline import io, tracking
from pipeline.config import GeneratorConfig
from pipeline.palette import COLOR_NAMES


def load_spec(path: Path) -> dict:
    """The scene templates, styles and word list (see ``datasets/sources/ocr_scenes.yaml``)."""
    if not path.is_file():
        raise SystemExit(f"--spec {path}: no such file")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("scenes", "styles", "style_shares", "words"):
        if key not in spec:
            raise SystemExit(f"{path}: missing key {key!r}")
    return spec


def split_vocabulary(spec: dict, cfg: GeneratorConfig) -> tuple[list[str], list[str]]:
    """(train words, held-out words): the spec's words within the length bounds, split by seed."""
    words = sorted({w for w in spec["words"].split() if cfg.word_min_len <= len(w) <= cfg.word_max_len})
    n_heldout = round(len(words) * cfg.heldout_fraction)
    if len(words) - n_heldout < 1:
        raise SystemExit(
            f"dataset.source.generator: only {len(words)} words have {cfg.word_min_len} to "
            f"{cfg.word_max_len} letters; too few for heldout_fraction={cfg.heldout_fraction}"
        )
    shuffled = random.Random(cfg.seed).sample(words, len(words))
    return sorted(shuffled[n_heldout:]), sorted(shuffled[:n_heldout])


def make_prompt(rng: random.Random, spec: dict, word: str) -> str:
    """One prompt: a scene with ``word`` quoted and a drawn style."""
    draw = rng.random()
    shares = spec["style_shares"]
    if draw < shares["palette"]:
        style = rng.choice(spec["styles"]["palette"]).format(color=rng.choice(COLOR_NAMES))
    elif draw < shares["palette"] + shares["off_palette"]:
        style = rng.choice(spec["styles"]["off_palette"])
    else:
        style = rng.choice(spec["styles"]["plain"])
    return rng.choice(spec["scenes"]).format(text=f'"{word}"', style=style)


def generate(spec: dict, cfg: GeneratorConfig) -> tuple[list[str], list[str], dict]:
    """(train prompts, test prompts, vocabulary record)."""
    train_words, heldout_words = split_vocabulary(spec, cfg)
    rng = random.Random(cfg.seed + 1)
    train = [make_prompt(rng, spec, rng.choice(train_words)) for _ in range(cfg.n_train)]
    every_word = train_words + heldout_words
    test = [make_prompt(rng, spec, rng.choice(every_word)) for _ in range(cfg.n_test)]
    vocab = {"train_words": train_words, "heldout_words": heldout_words}
    return train, test, vocab


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
