"""Rendering the mini model's training images: one word, one colour, a fixed layout.

What a 4M-parameter model learns on 2 CPU cores in minutes is narrow, so the task is made
learnable on purpose (see the pretraining issue's measurements): one monospace bold font,
upper-case words, left-aligned at a fixed position on a 32 x 128 canvas. The layout
constants live in :class:`Layout` so the model's character position map
(:mod:`pipeline.models.mini`) paints its bands exactly where the renderer puts characters.

Colours are not one RGB per name: each image draws a *shade* inside the region its name
covers (a random CIELAB offset from the prototype, kept only while the prototype is still
the nearest palette colour), and the background is usually light or dark but sometimes a
competing palette colour, so the base model's colour reward has room to improve.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.data.images import srgb_to_lab
from pipeline.data.palette import COLOR_NAMES, PALETTE

FONT_PATH = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono-Bold.ttf"
PALETTE_LAB = srgb_to_lab(np.array([PALETTE[c] for c in COLOR_NAMES], dtype=np.float64))
# Background lightness bands (0..255 grey levels).
LIGHT_RANGE, DARK_RANGE = (215, 250), (10, 45)
# Text must stand this far (Delta-E) from its background to be legible at all.
MIN_CONTRAST = 30.0


@dataclass(frozen=True)
class Layout:
    """Fixed text placement on the canvas (pixels)."""

    width: int = 128
    height: int = 32
    font_px: int = 22
    left_px: int = 8

    @property
    def advance_px(self) -> float:
        """Horizontal advance of one monospace character."""
        return _font(self.font_px).getlength("M")


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_PATH), size)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pipeline.data.images.srgb_to_lab` for one ``[3]`` colour -> 0..255."""
    lightness, a, b = lab
    fy = (lightness + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200
    eps, kappa = 216 / 24389, 24389 / 27
    xyz = np.array([f**3 if f**3 > eps else (116 * f - 16) / kappa for f in (fx, fy, fz)])
    xyz *= np.array([0.95047, 1.0, 1.08883])
    m = np.array(
        [
            [3.2404542, -1.5371385, -0.4985314],
            [-0.9692660, 1.8760108, 0.0415560],
            [0.0556434, -0.2040259, 1.0572252],
        ]
    )
    linear = np.clip(m @ xyz, 0, 1)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(srgb * 255, 0, 255)


def sample_shade(color: str, rng: np.random.Generator, spread: float) -> tuple[int, int, int]:
    """An sRGB shade of ``color``: the prototype moved by up to ``spread`` Delta-E in CIELAB,
    redrawn until the prototype is still the nearest palette colour."""
    index = COLOR_NAMES.index(color)
    for _ in range(20):
        lab = PALETTE_LAB[index] + rng.uniform(-spread, spread, 3)
        rgb = lab_to_srgb(lab).round()
        if int(np.linalg.norm(PALETTE_LAB - srgb_to_lab(rgb), axis=-1).argmin()) == index:
            return tuple(int(v) for v in rgb)
    return PALETTE[color]


def sample_background(
    text_rgb: tuple[int, int, int], rng: np.random.Generator, competing_share: float
) -> tuple[int, int, int]:
    """Light or dark grey (whichever contrasts), or sometimes another palette colour."""
    text_lab = srgb_to_lab(np.array(text_rgb, dtype=np.float64))
    if rng.random() < competing_share:
        for name in rng.permutation(COLOR_NAMES):
            if (
                np.linalg.norm(srgb_to_lab(np.array(PALETTE[name], dtype=np.float64)) - text_lab)
                >= MIN_CONTRAST
            ):
                return PALETTE[name]
    level_range = DARK_RANGE if text_lab[0] > 55 else LIGHT_RANGE
    level = int(rng.integers(*level_range))
    return (level, level, level)


def render_word(
    text: str, text_rgb: tuple[int, int, int], background: tuple[int, int, int], layout: Layout = Layout()
) -> np.ndarray:
    """``text`` at the fixed layout position; uint8 ``[H, W, 3]``."""
    image = Image.new("RGB", (layout.width, layout.height), background)
    draw = ImageDraw.Draw(image)
    font = _font(layout.font_px)
    _, top, _, bottom = draw.textbbox((0, 0), "M", font=font)
    y = (layout.height - (bottom - top)) / 2 - top
    draw.text((layout.left_px, y), text, fill=text_rgb, font=font)
    return np.asarray(image)


def render_example(
    text: str,
    color: str,
    rng: np.random.Generator,
    shade_spread: float = 12.0,
    competing_share: float = 0.2,
    layout: Layout = Layout(),
) -> np.ndarray:
    """One training image of ``text`` in a shade of ``color``."""
    shade = sample_shade(color, rng, shade_spread)
    return render_word(text, shade, sample_background(shade, rng, competing_share), layout)
