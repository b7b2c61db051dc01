"""Pure reward maths against hand-computed or published reference values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.images import as_rgb, srgb_to_lab
from pipeline.data.palette import COLOR_NAMES
from pipeline.rewards.color import palette_probabilities
from pipeline.rewards.ocr import exact_match, is_single_line, normalise, ocr_score


@pytest.mark.parametrize(
    ("rgb", "lab"),
    [
        # Reference CIELAB (D65) values of sRGB primaries, as tabulated by Bruce Lindbloom.
        ((255, 255, 255), (100.0, 0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        ((255, 0, 0), (53.24, 80.09, 67.20)),
        ((0, 255, 0), (87.73, -86.18, 83.18)),
        ((0, 0, 255), (32.30, 79.19, -107.86)),
        ((128, 128, 128), (53.59, 0.0, 0.0)),
    ],
)
def test_srgb_to_lab_reference_values(rgb, lab):
    np.testing.assert_allclose(srgb_to_lab(np.array(rgb)), lab, atol=0.05)


def test_palette_probabilities():
    red_lab = srgb_to_lab(np.array((220, 30, 30)))
    p = palette_probabilities(red_lab, temperature=10.0)
    assert p.shape == (10,) and abs(p.sum() - 1) < 1e-9
    assert COLOR_NAMES[int(p.argmax())] == "red" and p.max() > 0.9
    # A higher temperature spreads probability to the neighbours.
    assert palette_probabilities(red_lab, temperature=40.0).max() < p.max()


@pytest.mark.parametrize(
    ("recognised", "target", "score", "distance"),
    [
        ("HELLO", "HELLO", 1.0, 0),
        ("hello", "HELLO", 1.0, 0),  # case-insensitive
        ("SAY HELLO NOW", "HELLO", 1.0, 0),  # substring
        ("Open Late", "OPENLATE", 1.0, 0),  # spaces removed
        ("HELO", "HELLO", 0.8, 1),
        ("HXLLQ", "HELLO", 0.6, 2),
        ("", "HELLO", 0.0, 5),
        ("ABCDEFGHIJ", "CAT", 0.0, 3),  # distance capped at the target length
        ("\uff28\uff25\uff2c\uff2c\uff2f", "HELLO", 1.0, 0),  # full-width letters (NFKC)
    ],
)
def test_ocr_score_by_hand(recognised, target, score, distance):
    assert ocr_score(recognised, target) == (pytest.approx(score), distance)


def test_ocr_score_rejects_empty_target():
    with pytest.raises(ValueError, match="empty OCR target"):
        ocr_score("x", "  ")


def test_exact_match_and_normalise():
    assert exact_match("open late", "OPEN LATE") and not exact_match("OPEN LATE!", "OPEN LATE")
    assert normalise(" A b\tC ") == "abc"


def test_single_line_shapes():
    assert (
        is_single_line((32, 128, 3)) and not is_single_line((256, 256, 3)) and not is_single_line((200, 800))
    )


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.zeros((32, 128, 3), np.uint8), "blank"),
        (np.full((32, 128, 3), 200, np.uint8), "blank"),
        (np.random.default_rng(0).integers(0, 255, (4, 128, 3), dtype=np.uint8), "tiny"),
        (np.full((32, 128, 3), np.nan, np.float32), "nan"),
        (np.zeros((32, 128, 5), np.uint8), "bad_shape"),
    ],
)
def test_unscorable_images_have_a_reason(image, reason):
    assert as_rgb(image) == (None, reason)


def test_float_images_are_converted():
    image = np.zeros((32, 128, 3), np.float32)
    image[:, :64] = 1.0
    rgb, reason = as_rgb(image)
    assert reason is None and rgb.dtype == np.uint8 and rgb.max() == 255
