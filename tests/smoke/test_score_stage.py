"""The batch scoring stage: long table, workers agree with one process, input errors."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.palette import PALETTE
from pipeline.data.text_images import LIGHT, render
from pipeline.rewards import REWARDS, scoring
from pipeline.rewards.base import Reward
from pipeline.rewards.scoring import LeafScorer
from pipeline.stages import score

NAMES = ("ocr", "color", "quality")


def write_samples(folder, rows):
    """``rows``: (text rendered, target text, colour rendered, target colour)."""
    records = []
    for i, (shown, target, drawn, wanted) in enumerate(rows):
        path = folder / f"img_{i}.png"
        Image.fromarray(render(shown, PALETTE[drawn], LIGHT)).save(path)
        records.append(
            {
                "image_path": path.name,
                "prompt": f'A sign "{target}"',
                "text": target,
                "color": wanted,
                "sample_id": i,
                "method": "base",
            }
        )
    samples = folder / "samples.parquet"
    pd.DataFrame(records).to_parquet(samples)
    return samples


@pytest.fixture
def samples(tmp_path):
    rows = [
        ("HELLO", "HELLO", "red", "red"),
        ("TIGER", "TIGER", "blue", "green"),
        ("CAMRA", "CAMERA", "black", "black"),
    ]
    rows = rows * 4  # 12 images: two chunks per worker
    return write_samples(tmp_path, rows)


def test_long_table_one_row_per_image_and_reward(samples, tmp_path):
    out = tmp_path / "rewards.parquet"
    assert (
        score.main(
            ["--samples", str(samples), "--out", str(out), "--rewards", ",".join(NAMES), "--workers", "2"]
        )
        == 0
    )
    table = pd.read_parquet(out)
    assert len(table) == 12 * 3
    assert list(table["reward"][:3]) == list(NAMES)
    assert {"sample_id", "method", "score", "reason", "ocr_text", "color_pred", "quality_contrast"} <= set(
        table.columns
    )
    ocr = table[table.reward == "ocr"].set_index("sample_id")
    assert ocr.loc[0, "score"] == 1.0 and ocr.loc[0, "ocr_exact"]
    assert ocr.loc[2, "score"] == pytest.approx(5 / 6) and ocr.loc[2, "ocr_distance"] == 1
    color = table[table.reward == "color"].set_index("sample_id")
    assert color.loc[1, "color_pred"] == "blue" and color.loc[1, "score"] < 0.1

    single = tmp_path / "single.parquet"
    assert (
        score.main(
            ["--samples", str(samples), "--out", str(single), "--rewards", ",".join(NAMES), "--workers", "1"]
        )
        == 0
    )
    pd.testing.assert_frame_equal(table, pd.read_parquet(single))


def test_missing_image_fails_naming_the_file(samples, tmp_path):
    (tmp_path / "img_3.png").unlink()
    with pytest.raises(SystemExit, match="row 3: image file .*img_3.png does not exist"):
        score.main(["--samples", str(samples), "--out", str(tmp_path / "r.parquet"), "--rewards", "ocr"])
    assert not (tmp_path / "r.parquet").exists()


def test_unreadable_images_get_a_reason_and_the_rest_is_scored(samples, tmp_path, capsys):
    (tmp_path / "img_5.png").write_bytes(b"")  # empty
    png = (tmp_path / "img_7.png").read_bytes()
    (tmp_path / "img_7.png").write_bytes(png[: len(png) // 2])  # truncated
    out = tmp_path / "r.parquet"
    args = ["--samples", str(samples), "--out", str(out), "--rewards", "ocr,color", "--workers", "2"]
    assert score.main(args) == 0
    assert "2 of 12 images unreadable" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert len(table) == 12 * 2 and list(table.sample_id) == [i for i in range(12) for _ in range(2)]
    bad = table[table.sample_id.isin([5, 7])]
    assert bad.score.isna().all() and bad.reason.str.startswith("unreadable: image file").all()
    assert bad[bad.sample_id == 7].reason.str.contains("img_7.png").all()
    good = table[~table.sample_id.isin([5, 7])]
    assert good.score.notna().all() and (good[good.reward == "ocr"].score > 0.8).all()


def test_strict_makes_an_unreadable_image_an_error_before_scoring(samples, tmp_path, monkeypatch):
    (tmp_path / "img_5.png").write_bytes(b"garbage")
    monkeypatch.setattr(scoring, "score_table", lambda *a, **k: pytest.fail("scored before the check"))
    args = ["--samples", str(samples), "--out", str(tmp_path / "r.parquet"), "--rewards", "ocr", "--strict"]
    with pytest.raises(SystemExit, match=r"row 5: image file .*img_5.png cannot be read.*--strict"):
        score.main(args)
    assert not (tmp_path / "r.parquet").exists()


def test_row_without_target_text_fails_naming_the_row(tmp_path):
    samples = write_samples(tmp_path, [("HELLO", "HELLO", "red", "red")] * 3)
    table = pd.read_parquet(samples)
    table.loc[2, "text"] = None
    table.loc[2, "prompt"] = "A sign without a quote"
    table.to_parquet(samples)
    with pytest.raises(SystemExit, match="row 2: no target text"):
        score.main(["--samples", str(samples), "--out", str(tmp_path / "r.parquet"), "--rewards", "ocr"])


def test_unknown_reward_fails_listing_names(samples, tmp_path):
    with pytest.raises(SystemExit, match="valid names: ocr, color, quality, pickscore"):
        score.main(
            ["--samples", str(samples), "--out", str(tmp_path / "r.parquet"), "--rewards", "ocr,beauty"]
        )


def test_a_decompression_bomb_is_an_unreadable_image(samples, tmp_path, monkeypatch, capsys):
    """More pixels than twice PIL's limit is DecompressionBombError, which scoring crashed on.
    The limit is lowered so that a 200 x 200 image stands for a bomb; the 32 x 128 ones pass."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000)
    Image.new("RGB", (200, 200), "white").save(tmp_path / "img_5.png")
    out = tmp_path / "r.parquet"
    assert (
        score.main(["--samples", str(samples), "--out", str(out), "--rewards", "ocr", "--workers", "1"]) == 0
    )
    assert "1 of 12 images unreadable" in capsys.readouterr().out
    table = pd.read_parquet(out).set_index("sample_id")
    assert table.loc[5, "reason"].startswith("unreadable:") and "decompression bomb" in table.loc[5, "reason"]


class HalfBlindReward(Reward):
    """A toy reward that returns NaN (or infinity) for the images of some target words."""

    name = "half_blind"
    detail_defaults: ClassVar[dict] = {}
    blind: ClassVar[dict[str, float]] = {"TIGER": float("nan"), "CAMERA": float("inf")}

    def score_image(self, rgb, meta: dict, target: None) -> tuple[float, dict]:
        return self.blind.get(meta["text"], 0.5), {}


@pytest.fixture
def half_blind(monkeypatch):
    monkeypatch.setitem(REWARDS, HalfBlindReward.name, HalfBlindReward)


def test_a_non_finite_score_is_recorded_missing_with_its_reason(samples, tmp_path, half_blind, capsys):
    """4 of 12 images NaN, 4 infinite: each missing with reward, value and image, counted,
    and out of the mean (it was 0.5 before and 0.5 it stays)."""
    out = tmp_path / "r.parquet"
    args = ["--samples", str(samples), "--out", str(out), "--rewards", "half_blind,color", "--workers", "1"]
    assert score.main(args) == 0
    assert "8 non-finite scores recorded as missing (reason 'non-finite score: ...'): half_blind 8" in (
        capsys.readouterr().out
    )
    table = pd.read_parquet(out)
    mine = table[table.reward == "half_blind"]
    bad = mine[mine.text.isin(["TIGER", "CAMERA"])]
    assert len(bad) == 8 and bad.score.isna().all()
    assert bad.reason.str.match(r"non-finite score: half_blind returned (nan|inf) for .*img_\d+\.png").all()
    assert "img_1.png" in bad.reason.iloc[0]
    assert mine.score.mean() == 0.5  # the four finite scores alone
    assert table[table.reward == "color"].score.notna().all()  # the other reward is untouched


def test_strict_makes_a_non_finite_score_an_error_naming_the_image(samples, tmp_path, half_blind):
    out = tmp_path / "r.parquet"
    args = [
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--rewards",
        "half_blind",
        "--workers",
        "1",
        "--strict",
    ]
    with pytest.raises(
        SystemExit, match=r"img_1.png: non-finite score: half_blind returned nan .*--strict; 8 "
    ):
        score.main(args)
    assert not out.exists()


def test_training_stops_on_a_non_finite_reward_naming_it(half_blind):
    scorer = LeafScorer({"half_blind": HalfBlindReward()})
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 128, 3), dtype=np.uint8)
    prompts = ['A sign "HELLO"', 'A sign "TIGER"', 'A sign "CAT"']
    with pytest.raises(FloatingPointError, match=r"reward 'half_blind' returned nan for 1 of 3 rollouts "):
        scorer(images, prompts, ["HELLO", "TIGER", "CAT"], ["red", "blue", "black"])
