"""The project's own prompt generator: held-out words, word lengths, format, determinism."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pipeline.config.types import GeneratorConfig
from pipeline.data import generator
from pipeline.data.curation import decide
from tests.conftest import REPO

SPEC = generator.load_spec(REPO / "datasets" / "sources" / "ocr_scenes.yaml")


def quoted(prompt: str) -> str:
    return re.search(r'"([^"]+)"', prompt).group(1)


def test_heldout_words_never_reach_training():
    cfg = GeneratorConfig(n_train=500, n_test=300, heldout_fraction=0.25, seed=1)
    train, test, vocab = generator.generate(SPEC, cfg)
    heldout = set(vocab["heldout_words"])
    assert heldout and not heldout & set(vocab["train_words"])
    assert not {quoted(p) for p in train} & heldout
    assert {quoted(p) for p in test} & heldout, "test prompts should use held-out words"


@pytest.mark.parametrize(("low", "high"), [(3, 3), (4, 6), (5, 6)])
def test_word_length_bounds(low, high):
    cfg = GeneratorConfig(n_train=200, n_test=50, word_min_len=low, word_max_len=high)
    train, test, _ = generator.generate(SPEC, cfg)
    lengths = {len(quoted(p)) for p in train + test}
    assert lengths <= set(range(low, high + 1))


def test_prompts_are_one_line_ocr_format_and_curate():
    train, test, _ = generator.generate(SPEC, GeneratorConfig(n_train=400, n_test=10))
    assert all("\n" not in p and p.count('"') == 2 for p in train + test)
    actions = {decide(p).action for p in train}
    assert actions == {"allowed", "augmented", "drop"}, "the styles should exercise every curation path"


def test_same_seed_same_prompts():
    cfg = GeneratorConfig(n_train=50, n_test=20, seed=4)
    assert generator.generate(SPEC, cfg) == generator.generate(SPEC, cfg)
    other = dataclasses.replace(cfg, seed=5)
    assert generator.generate(SPEC, cfg)[0] != generator.generate(SPEC, other)[0]


def test_too_few_words_is_a_clear_error():
    cfg = GeneratorConfig(word_min_len=30, word_max_len=32)
    with pytest.raises(SystemExit, match="word_min_len|too few"):
        generator.generate(SPEC, cfg)
