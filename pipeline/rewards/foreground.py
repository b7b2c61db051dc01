"""Separate rendered text from its background, in CIELAB.

Used by the colour and quality rewards. The background colour is the median of the image's
border (text rarely touches the border of a single-line image or an OCR box); pixels far
from it are text. Anti-aliased stroke edges are blends with the background, so the text's
own colour is taken from the *core* of the strokes: the foreground pixels farthest from the
background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.images import srgb_to_lab

# Width of the border band that estimates the background (pixels).
BORDER_PX = 2
# A pixel is foreground when its distance to the background exceeds this many Delta-E units
# (just-noticeable difference is ~2; JPEG-like noise stays below ~10).
MIN_FOREGROUND_DELTA_E = 15.0
# ... and at least this share of the farthest pixel's distance (ignores faint halos).
RELATIVE_FOREGROUND = 0.35
# Share of foreground pixels (the farthest from the background) that form the stroke core.
CORE_SHARE = 0.4
# Fewer foreground pixels than this is "no text".
MIN_FOREGROUND_PX = 12


@dataclass(frozen=True)
class Separation:
    """Foreground/background split of one image (colours in CIELAB).

    Attributes:
        background: ``[3]`` median border colour.
        text: ``[3]`` median colour of the stroke core.
        foreground_mask: ``[H, W]`` bool.
        distance: ``[H, W]`` Delta-E of every pixel to the background.
        background_std: mean per-channel std of non-foreground pixels (Delta-E units).
    """

    background: np.ndarray
    text: np.ndarray
    foreground_mask: np.ndarray
    distance: np.ndarray
    background_std: float


def border_pixels(lab: np.ndarray, width: int = BORDER_PX) -> np.ndarray:
    """``[K, 3]`` pixels of the ``width``-pixel frame of ``lab`` ``[H, W, 3]``."""
    mask = np.zeros(lab.shape[:2], dtype=bool)
    mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = True, True, True, True
    return lab[mask]


def separate(rgb: np.ndarray) -> Separation | None:
    """Split ``rgb`` (uint8 ``[H, W, 3]``) into text and background; ``None`` if no text."""
    lab = srgb_to_lab(rgb)
    background = np.median(border_pixels(lab), axis=0)
    distance = np.linalg.norm(lab - background, axis=-1)
    threshold = max(MIN_FOREGROUND_DELTA_E, RELATIVE_FOREGROUND * float(distance.max()))
    mask = distance > threshold
    if int(mask.sum()) < MIN_FOREGROUND_PX:
        return None
    fg_distance = distance[mask]
    core = lab[mask][fg_distance >= np.quantile(fg_distance, 1.0 - CORE_SHARE)]
    rest = lab[~mask]
    background_std = float(rest.std(axis=0).mean()) if len(rest) else 0.0
    return Separation(background, np.median(core, axis=0), mask, distance, background_std)
