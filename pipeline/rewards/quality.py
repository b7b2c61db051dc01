"""``quality``: a reference-free legibility-quality score for rendered text, on a 0-10 scale.

A stand-in for PickScore in the default (offline, CPU) study, where no learned preference
model is available. It does not judge aesthetics or prompt alignment; it measures what a
person would call a *clean* rendering of text, from the text/background separation of
:mod:`pipeline.rewards.foreground`:

* contrast — Delta-E between the stroke core and the background, ``min(1, dE / 60)``;
* cleanliness — how flat the background is: ``exp(-std / 8)`` of its CIELAB std (Delta-E
  units; speckle and blotches lower it);
* crispness — the share of foreground pixels that are *not* in the blurry transition band
  (between 25% and 75% of the core's distance to the background); blur and smear widen
  that band.

The score is ``10 x`` their geometric mean. The 0-10 range (like aesthetic predictors) and
its different variance from ``ocr`` and ``color`` (both in [0, 1]) are deliberate: this is
the reward-scale mismatch that Multi-GRPO's per-reward normalisation is meant to handle.
"""

from __future__ import annotations

import numpy as np

from pipeline.rewards.base import Reward
from pipeline.rewards.foreground import separate

CONTRAST_FULL_DELTA_E = 60.0
BACKGROUND_STD_SCALE = 8.0
SCALE = 10.0


def quality_components(rgb: np.ndarray) -> dict[str, float] | None:
    """``{contrast, cleanliness, crispness}`` each in [0, 1], or None when there is no text."""
    separation = separate(rgb)
    if separation is None:
        return None
    core_distance = float(np.linalg.norm(separation.text - separation.background))
    contrast = min(1.0, core_distance / CONTRAST_FULL_DELTA_E)
    cleanliness = float(np.exp(-separation.background_std / BACKGROUND_STD_SCALE))
    relative = separation.distance / max(core_distance, 1e-6)
    transition = (relative > 0.25) & (relative < 0.75)
    strokes = separation.foreground_mask | transition
    crispness = 1.0 - float(transition.sum()) / max(int(strokes.sum()), 1)
    return {"contrast": contrast, "cleanliness": cleanliness, "crispness": crispness}


class QualityReward(Reward):
    name = "quality"
    label = "quality (0-10)"

    def score_image(self, rgb: np.ndarray, meta: dict, target: None) -> tuple[float, dict]:
        components = quality_components(rgb)
        if components is None:
            return 0.0, {"reason": "no_foreground"}
        score = SCALE * float(np.prod(list(components.values()))) ** (1 / 3)
        return score, {f"quality_{k}": v for k, v in components.items()}
