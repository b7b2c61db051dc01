"""``color``: how close the rendered text's colour is to the required palette colour.

Measured on the text's own pixels: the foreground of the OCR boxes (or of the whole image
for a single-line image), separated from the background in CIELAB
(:mod:`pipeline.rewards.foreground`), using the stroke core so that anti-aliased edges do
not pull the colour towards the background.

Why a palette probability and not a plain distance: a colour *name* covers a region of
colour space (a dark red is still red), so distance to one canonical RGB would punish
legitimate shades and could rank a wrong name above a right one. Instead the text colour's
CIELAB distances ``d_c`` (Delta-E 1976) to the ten palette prototypes become a softmax
``p_c = exp(-d_c / T) / sum exp(-d_k / T)``; the score is ``p_target``. It is near 1 when the
text is clearly the target colour, near 0 when it is clearly another palette colour, and in
between for colours on a boundary (orange/brown, pink/purple). ``T`` (Delta-E units) sets
how sharp the boundary is. The predicted colour (``argmax p``) gives colour accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.config.schema import defaults_from_schema
from pipeline.data.images import srgb_to_lab
from pipeline.data.palette import COLOR_NAMES, PALETTE
from pipeline.rewards.base import Reward, target_color
from pipeline.rewards.foreground import separate
from pipeline.rewards.ocr import OcrEngine, OcrReading

PALETTE_LAB = srgb_to_lab(np.array([PALETTE[c] for c in COLOR_NAMES], dtype=np.float64))  # [10, 3]
# Margin (pixels) around OCR boxes so the crop's border is background, not stroke.
BOX_MARGIN_PX = 3


def palette_probabilities(lab: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over the palette of negative Delta-E / temperature.

    Args:
        lab: ``[3]`` CIELAB colour.
        temperature: Delta-E units.
    Returns:
        ``[10]`` probabilities in ``COLOR_NAMES`` order.
    """
    distances = np.linalg.norm(PALETTE_LAB - lab, axis=-1)
    logits = -distances / temperature
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def text_region(rgb: np.ndarray, reading: OcrReading | None) -> np.ndarray:
    """The crop that holds the text: the union of the OCR boxes plus a margin, or the image."""
    if reading is None or reading.mode == "rec" or not reading.boxes:
        return rgb
    boxes = np.array(reading.boxes)
    height, width = rgb.shape[:2]
    x0, y0 = np.maximum(boxes[:, :2].min(axis=0) - BOX_MARGIN_PX, 0)
    x1 = min(int(boxes[:, 2].max()) + BOX_MARGIN_PX, width)
    y1 = min(int(boxes[:, 3].max()) + BOX_MARGIN_PX, height)
    return rgb[y0:y1, x0:x1]


@dataclass(frozen=True)
@defaults_from_schema("rewards.color")
class ColorSettings:
    """``rewards.color``: ColorReward's arguments of the same names."""

    temperature: float
    use_ocr_boxes: bool


class ColorReward(Reward):
    """Args:
    temperature: softmax temperature in Delta-E units (module docstring).
    use_ocr_boxes: measure inside the OCR boxes of scene images (needs OCR); when False
        the whole image's foreground is measured.
    engine: OCR engine used when no reading is precomputed.
    """

    name = "color"
    label = "colour reward"
    indicators: ClassVar[dict[str, str]] = {"color_correct": "colour accuracy"}
    settings_class = ColorSettings
    config_sections: ClassVar[tuple[str, ...]] = ("color", "ocr")
    needs_ocr = True  # by default (use_ocr_boxes); an instance without boxes sets False
    detail_defaults: ClassVar[dict] = {
        "color_pred": None,
        "color_correct": False,
        "color_delta_e": None,
        "color_text_lab": None,
    }

    def __init__(
        self, temperature: float = 10.0, use_ocr_boxes: bool = True, engine: OcrEngine | None = None
    ):
        self.temperature, self.use_ocr_boxes = temperature, use_ocr_boxes
        self.needs_ocr = use_ocr_boxes
        self._engine = engine

    @classmethod
    def from_settings(cls, settings: dict, engine, device: str) -> ColorReward:
        return cls(engine=engine(), **settings)

    def _reading(self, rgb: np.ndarray, meta: dict) -> OcrReading | None:
        if not self.use_ocr_boxes:
            return None
        if "ocr" not in meta:
            self._engine = self._engine or OcrEngine()
            meta["ocr"] = self._engine.read(rgb)
        return meta["ocr"]

    def target(self, prompt: str, meta: dict, row: int) -> str:
        return target_color(meta, row)

    def score_image(self, rgb: np.ndarray, meta: dict, target: str) -> tuple[float, dict]:
        reading = self._reading(rgb, meta)
        if reading is not None and reading.mode == "det" and not reading.boxes:
            return 0.0, {"reason": "no_text_detected"}
        separation = separate(text_region(rgb, reading))
        if separation is None:
            return 0.0, {"reason": "no_foreground"}
        probabilities = palette_probabilities(separation.text, self.temperature)
        index = COLOR_NAMES.index(target)
        predicted = COLOR_NAMES[int(probabilities.argmax())]
        return probabilities[index], {
            "color_pred": predicted,
            "color_correct": predicted == target,
            "color_delta_e": float(np.linalg.norm(PALETTE_LAB[index] - separation.text)),
            "color_text_lab": [round(float(v), 2) for v in separation.text],
        }
