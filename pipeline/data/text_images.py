"""Ground-truth text images: a word drawn in a known colour and font (fonts that ship with
matplotlib and Pillow), for the reward tests and the scoring benches."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono-Bold.ttf", None)  # None: Pillow's Aileron
LIGHT, DARK = (236, 236, 230), (28, 28, 34)


def font(name: str | None, size: int) -> ImageFont.FreeTypeFont:
    return (
        ImageFont.load_default(size=size) if name is None else ImageFont.truetype(str(FONT_DIR / name), size)
    )


def render(
    text: str,
    color: tuple[int, int, int],
    background: tuple[int, int, int],
    *,
    size: tuple[int, int] = (128, 32),
    font_name: str | None = FONTS[0],
    font_px: int = 20,
) -> np.ndarray:
    """``text`` centred on a ``size`` (width, height) image; uint8 ``[H, W, 3]``."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    face = font(font_name, font_px)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
    draw.text(((size[0] - (x1 - x0)) / 2 - x0, (size[1] - (y1 - y0)) / 2 - y0), text, fill=color, font=face)
    return np.asarray(image)


def contrasting_background(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """The light or dark background on which ``color`` reads better."""
    luminance = 0.2126 * color[0] + 0.7152 * color[1] + 0.0722 * color[2]
    return DARK if luminance > 140 else LIGHT
