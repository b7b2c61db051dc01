"""``ocr``: Flow-GRPO's text reward on PP-OCR readings (see :mod:`pipeline.rewards.ocr`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.config.schema import defaults_from_schema
from pipeline.data.images import as_rgb
from pipeline.rewards.base import Reward, RewardOutput, check_lengths, target_text
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

    def __init__(self, engine: OcrEngine | None = None):
        self._engine = engine

    @classmethod
    def from_settings(cls, settings: dict, engine, device: str) -> OcrReward:
        # The engine options (backend, mode) are read by build_rewards' shared engine.
        return cls(engine())

    def score(self, images: Sequence, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        check_lengths(images, prompts, metadata)
        targets = [target_text(p, m, row) for row, (p, m) in enumerate(zip(prompts, metadata, strict=True))]
        scores = np.zeros(len(images), dtype=np.float32)
        details = []
        for row, (image, meta, target) in enumerate(zip(images, metadata, targets, strict=True)):
            rgb, reason = as_rgb(image)
            detail = {
                "reason": reason,
                "ocr_text": None,
                "ocr_confidence": None,
                "ocr_distance": None,
                "ocr_exact": False,
                "ocr_mode": None,
            }
            if rgb is not None:
                if "ocr" not in meta:
                    self._engine = self._engine or OcrEngine()
                    meta["ocr"] = self._engine.read(rgb)
                reading = meta["ocr"]
                scores[row], distance = ocr_score(reading.text, target)
                detail |= {
                    "ocr_text": reading.text,
                    "ocr_confidence": reading.confidence,
                    "ocr_distance": distance,
                    "ocr_exact": exact_match(reading.text, target),
                    "ocr_mode": reading.mode,
                }
            details.append(detail)
        return RewardOutput(scores, details)
