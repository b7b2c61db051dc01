"""Rewards on ground-truth images the test renders: real PP-OCR models, all ten colours."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.data.images import load_image, srgb_to_lab
from pipeline.data.palette import COLOR_NAMES, PALETTE
from pipeline.data.text_images import DARK, FONTS, LIGHT, contrasting_background, render
from pipeline.rewards import build_rewards

WORDS = ("HELLO", "CAMERA", "TIGER", "MAPLE")
# Shades inside each name's region of colour space, not only the canonical RGB.
SHADES = {
    "red": [(220, 30, 30), (170, 20, 25), (240, 60, 50)],
    "purple": [(128, 40, 160), (100, 30, 130), (150, 60, 190)],
    "blue": [(30, 70, 220), (20, 50, 170), (60, 110, 240)],
    "green": [(30, 150, 50), (20, 110, 40), (60, 180, 70)],
    "white": [(255, 255, 255), (245, 245, 240)],
    "pink": [(255, 120, 180), (240, 100, 160), (255, 150, 200)],
    "yellow": [(250, 220, 30), (240, 210, 60), (255, 230, 0)],
    "brown": [(130, 80, 40), (110, 65, 30), (150, 95, 55)],
    "orange": [(250, 140, 20), (240, 120, 10), (255, 160, 40)],
    "black": [(0, 0, 0), (20, 20, 25)],
}


@pytest.fixture(scope="module")
def rewards():
    return build_rewards(["ocr", "color", "quality"])


def _cases():
    """(image, text, colour) over fonts, sizes, every colour shade, light and dark backgrounds."""
    cases = []
    for i, (name, shades) in enumerate(SHADES.items()):
        for j, rgb in enumerate(shades):
            for k, background in enumerate((LIGHT, DARK)):
                contrast = np.linalg.norm(srgb_to_lab(np.array(rgb)) - srgb_to_lab(np.array(background)))
                if contrast < 35:  # white on light grey is unreadable to anyone
                    continue
                word = WORDS[(i + j + k) % len(WORDS)]
                font = FONTS[(i + j + k) % len(FONTS)]
                if (i + j + k) % 3 == 0:
                    image = render(word, rgb, background, size=(256, 256), font_name=font, font_px=40)
                else:
                    image = render(word, rgb, background, font_name=font, font_px=20 + 2 * (j % 2))
                cases.append((image, word, name))
    return cases


def _score(reward, images, texts, colors):
    prompts = [f'A sign that reads "{t}".' for t in texts]
    metadata = [{"text": t, "color": c} for t, c in zip(texts, colors, strict=True)]
    return reward.score(images, prompts, metadata)


def test_right_text_scores_high(rewards):
    images, texts, colors = zip(*_cases(), strict=True)
    out = _score(rewards["ocr"], images, texts, colors)
    assert len(images) >= 50
    assert out.scores.mean() >= 0.95
    assert np.mean([d["ocr_exact"] for d in out.details]) >= 0.9


@pytest.mark.parametrize(
    ("rendered", "target", "distance"),
    [("HELO", "HELLO", 1), ("TIGRE", "TIGER", 2), ("CAMRA", "CAMERA", 1), ("MXPLQ", "MAPLE", 2)],
)
def test_misspelt_text_scores_lower_by_edit_distance(rewards, rendered, target, distance):
    image = render(rendered, PALETTE["black"], LIGHT)
    out = _score(rewards["ocr"], [image], [target], ["black"])
    assert out.scores[0] == pytest.approx(1 - distance / len(target))


def test_right_colour_is_classified(rewards):
    images, texts, colors = zip(*_cases(), strict=True)
    out = _score(rewards["color"], images, texts, colors)
    predicted = [d["color_pred"] for d in out.details]
    accuracy = np.mean([p == c for p, c in zip(predicted, colors, strict=True)])
    assert accuracy >= 0.95, list(zip(predicted, colors, strict=True))
    assert set(colors) == set(COLOR_NAMES)


def test_wrong_colour_scores_clearly_lower(rewards):
    for name in COLOR_NAMES:
        image = render("HELLO", PALETTE[name], contrasting_background(PALETTE[name]))
        wrong = [c for c in COLOR_NAMES if c != name]
        right = _score(rewards["color"], [image], ["HELLO"], [name]).scores[0]
        others = _score(rewards["color"], [image] * len(wrong), ["HELLO"] * len(wrong), wrong).scores
        assert right > 0.5 and right - others.max() > 0.3, (name, right, others)


def test_quality_prefers_clean_renderings(rewards):
    clean = render("HELLO", PALETTE["black"], LIGHT)
    blurred = np.asarray(Image.fromarray(clean).filter(ImageFilter.GaussianBlur(1.5)))
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    faint = render("HELLO", (200, 200, 195), LIGHT)
    scores = _score(rewards["quality"], [clean, blurred, noisy, faint], ["HELLO"] * 4, ["black"] * 4).scores
    assert scores[0] > scores[1] and scores[0] > scores[2] and scores[0] > scores[3]
    assert 0 <= scores.min() and scores.max() <= 10


@pytest.mark.parametrize("name", ["ocr", "color", "quality"])
def test_bad_images_score_zero_with_a_reason(rewards, name):
    images = [
        np.zeros((32, 128, 3), np.uint8),
        np.full((32, 128, 3), (200, 30, 30), np.uint8),
        np.zeros((5, 5, 3), np.uint8),
        np.full((32, 128, 3), np.nan, np.float32),
        render("HELLO", PALETTE["red"], LIGHT),
    ]
    out = _score(rewards[name], images, ["HELLO"] * 5, ["red"] * 5)
    assert out.scores.dtype == np.float32 and out.scores.shape == (5,)
    assert list(out.scores[:4]) == [0, 0, 0, 0]
    assert [d["reason"] for d in out.details[:4]] == ["blank", "blank", "tiny", "nan"]
    assert out.details[4]["reason"] is None and out.scores[4] > 0


def test_prompt_without_target_is_an_error_naming_the_row(rewards):
    images = [render("HELLO", PALETTE["red"], LIGHT)] * 2
    with pytest.raises(ValueError, match="row 1: no target text"):
        rewards["ocr"].score(images, ['A "HELLO" sign', "A sign with no quote"], [{}, {}])


def test_text_falls_back_to_the_prompt_and_ocr_runs_once(rewards):
    image = render("HELLO", PALETTE["red"], LIGHT)
    metadata = [{"color": "red"}]
    rewards["ocr"].score([image], ['A "HELLO" sign'], metadata)
    reading = metadata[0]["ocr"]
    rewards["color"].score([image], ['A "HELLO" sign'], metadata)
    assert metadata[0]["ocr"] is reading


def test_unknown_reward_lists_valid_names():
    with pytest.raises(
        ValueError, match="unknown reward.*'aesthetics'.*valid names: ocr, color, quality, pickscore"
    ):
        build_rewards(["ocr", "aesthetics"])


def test_missing_or_corrupt_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(corrupt)


def test_paddleocr_backend_without_package_is_a_clear_error():
    try:
        import paddleocr  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="rewards.ocr.backend is 'paddleocr'.*not installed"):
            build_rewards(["ocr"], {"ocr": {"backend": "paddleocr"}})
    else:
        pytest.skip("paddleocr is installed here")


def _meta(word: str, colour: str = "red") -> tuple[list[str], list[dict]]:
    return [f'A sign that reads "{word}". The color of the text "{word}" is {colour}.'], [
        {"text": word, "color": colour}
    ]


def test_sixteen_bit_greyscale_png_is_read_as_its_text(tmp_path):
    grey = render("TIGER", (0, 0, 0), (255, 255, 255), size=(256, 64), font_px=40)[..., 0]
    path = tmp_path / "sixteen.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # PNG, 16 bits per pixel
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded[..., 0], grey)
    prompts, metadata = _meta("TIGER")
    out = build_rewards(["ocr"])["ocr"].score([loaded], prompts, metadata)
    assert out.scores[0] == 1.0 and out.details[0]["reason"] is None


def test_uint16_and_out_of_range_arrays():
    from pipeline.data.images import as_rgb

    grey = render("SUN", (0, 0, 0), (255, 255, 255))
    rgb, reason = as_rgb(grey.astype(np.uint16) * 257)
    assert reason is None and np.array_equal(rgb, grey)
    assert as_rgb(grey.astype(np.int32) * 300) == (None, "out_of_range")


def test_oversized_image_is_read_at_the_working_size():
    from pipeline.rewards.ocr import OCR_MAX_SIDE

    small = render("HELLO", (200, 30, 30), (240, 240, 240), size=(1000, 1000), font_px=200)
    big = np.asarray(Image.fromarray(small).resize((4000, 4000)))
    prompts, metadata = _meta("HELLO")
    rewards = build_rewards(["ocr", "color"])
    out = rewards["ocr"].score([big], prompts, metadata)
    assert out.scores[0] == 1.0, out.details[0]
    (x0, y0, x1, y1), *_ = metadata[0]["ocr"].boxes
    assert 0 <= x0 < x1 <= 4000 and 0 <= y0 < y1 <= 4000 and (x1 - x0) > OCR_MAX_SIDE  # original pixels
    assert rewards["color"].score([big], prompts, metadata).details[0]["color_pred"] == "red"
