"""``ocr``: Flow-GRPO's text reward on PP-OCR readings (see :mod:`pipeline.rewards.ocr`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.config.schema import defaults_from_schema
from pipeline.rewards.base import Reward, target_text
from pipeline.rewards.ocr import OcrEngine, exact_match, ocr_score


@dataclass(frozen=True)
@defaults_from_schema("rewards.ocr")
class OcrSettings:
    """``rewards.ocr``: the OCR engine that every reward reading text shares."""

    backend: str
    mode: str
    paddle_det_dir: str | None
    paddle_rec_dir: str | None


class OcrReward(Reward):
    """Args:
    engine: the OCR engine (built on first use when None).
    """

    name = "ocr"
    label = "OCR reward"
    indicators: ClassVar[dict[str, str]] = {"ocr_exact": "OCR exact match"}
    settings_class = OcrSettings
    config_sections: ClassVar[tuple[str, ...]] = ("ocr",)
    needs_ocr = True
    detail_defaults: ClassVar[dict] = {
        "ocr_text": None,
        "ocr_confidence": None,
        "ocr_distance": None,
        "ocr_exact": False,
        "ocr_mode": None,
    }

    def __init__(self, engine: OcrEngine | None = None):
        self._engine = engine

    @classmethod
    def from_settings(cls, settings: dict, engine, device: str) -> OcrReward:
        # The engine options (backend, mode) are read by build_rewards' shared engine.
        return cls(engine())

    def target(self, prompt: str, meta: dict, row: int) -> str:
        return target_text(prompt, meta, row)

    def score_image(self, rgb: np.ndarray, meta: dict, target: str) -> tuple[float, dict]:
        if "ocr" not in meta:
            self._engine = self._engine or OcrEngine()
            meta["ocr"] = self._engine.read(rgb)
        reading = meta["ocr"]
        score, distance = ocr_score(reading.text, target)
        return score, {
            "ocr_text": reading.text,
            "ocr_confidence": reading.confidence,
            "ocr_distance": distance,
            "ocr_exact": exact_match(reading.text, target),
            "ocr_mode": reading.mode,
        }
