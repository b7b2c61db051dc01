"""The GPU memory estimate against hand arithmetic on the paper configs' shapes."""

import dataclasses

import pytest

from pipeline.config.files import merged, read_yaml
from pipeline.config.load import load
from pipeline.config.types import StudyConfig
from pipeline.workflow import memory
from tests.conftest import REPO


def paper(name: str) -> StudyConfig:
    raw = merged(
        read_yaml(REPO / "config.yaml"), read_yaml(REPO / "configs" / f"{name}.yaml")
    )
    return load(raw, name, check_paths=False)


def test_flux_training_activations_follow_the_per_block_rule_and_checkpointing_cuts_them():
    cfg = paper("paper_pickscore")
    tokens, hidden, rows, blocks = 1024 + 512, 3072, 9, 57  # 512 px: 32 x 32 patches; 512 T5 tokens
    without = memory.training_estimate(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gradient_checkpointing=False))
    )
    assert without["activations of one microbatch"] == pytest.approx(
        34 * tokens * hidden * rows * blocks / 1e9
    )
    assert without["frozen weights"] == pytest.approx((11.9e9 + 4.9e9 + 8.4e7) * 2 / 1e9)
    with_checkpointing = memory.training_estimate(cfg)
    assert with_checkpointing["activations of one microbatch"] == pytest.approx(
        (2 * blocks + 34) * tokens * hidden * rows / 1e9
    )


def test_evaluation_text_encoding_grows_with_the_chunk():
    cfg = paper("paper_pickscore")
    whole = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, eval_chunk=2048))
    scores = "text encoding of {} prompts (attention scores)"
    assert memory.evaluation_estimate(whole)[scores.format(2048)] == pytest.approx(
        64 * 512**2 * 2048 * 2 / 1e9
    )  # 68.7
    assert memory.evaluation_estimate(cfg)[scores.format(128)] == pytest.approx(68.72 / 16, rel=1e-3)


def test_the_report_names_each_part_and_the_mini_model_is_small():
    assert "training, per rank (microbatch 9): est. 48 GB" in memory.report(paper("paper_ocr_color"))
    assert "well under 1 GB" in memory.report(
        load(read_yaml(REPO / "config.yaml"), check_paths=False)
    )
