"""Reward registry: every reward is built from config by name.

``build_rewards(["ocr", "color"], settings)`` -> ``{name: Reward}``; an unknown name is an
error that lists the valid names. Rewards share one signature,
``reward(images, prompts, metadata) -> float32 [N]`` (:mod:`pipeline.rewards.base`).
"""

from __future__ import annotations

import dataclasses

from pipeline.rewards.base import Reward, RewardOutput
from pipeline.rewards.color import ColorReward
from pipeline.rewards.ocr import OcrEngine
from pipeline.rewards.ocr_reward import OcrReward
from pipeline.rewards.pickscore import PickScoreReward
from pipeline.rewards.quality import QualityReward

REWARDS: dict[str, type[Reward]] = {
    cls.name: cls for cls in (OcrReward, ColorReward, QualityReward, PickScoreReward)
}


def full_settings(sections: dict | None = None) -> dict[str, dict]:
    """Every registered reward's settings section (``Reward.settings_class``), the values of
    ``sections`` (``rewards.<name>`` as a config states them) over the class's defaults."""
    sections = sections or {}
    return {
        name: dataclasses.asdict(reward.read_settings(sections.get(name, {})))
        for name, reward in REWARDS.items()
        if reward.settings_class is not None
    }


def check_names(names: list[str]) -> None:
    """Fail on unknown reward names, listing the valid ones."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(
            f"unknown reward(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(REWARDS)}"
        )


def build_rewards(
    names: list[str], settings: dict | None = None, device: str = "cpu", ocr_threads: int = 0
) -> dict[str, Reward]:
    """Build the named rewards, sharing one OCR engine among those that read text.

    Args:
        names: reward names, e.g. ``["ocr", "color", "quality"]``.
        settings: the ``rewards.<name>`` sections as a config states them (absent keys and
            sections at each settings class's defaults, :func:`full_settings`).
        device: torch device for model-based rewards.
        ocr_threads: onnxruntime threads of the shared OCR engine (0 = default).
    """
    check_names(names)
    settings = full_settings(settings)
    shared: list[OcrEngine] = []

    def engine() -> OcrEngine:
        if not shared:
            shared.append(OcrEngine(**settings[OcrReward.name], threads=ocr_threads))
        return shared[0]

    return {name: REWARDS[name].from_settings(settings.get(name, {}), engine, device) for name in names}


__all__ = ["REWARDS", "Reward", "RewardOutput", "build_rewards", "check_names", "full_settings"]
