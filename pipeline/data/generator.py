"""The project's own OCR-style prompts: single-word texts from a vocabulary split into seen and
held-out words, placed in scenes (datasets/sources/ocr_scenes.yaml) with a palette colour, an
off-palette colour or none."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from pipeline.config.types import GeneratorConfig
from pipeline.data.palette import COLOR_NAMES


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
