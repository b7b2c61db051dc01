"""Image checks and conversions shared by the rewards.

A reward never crashes a batch on a bad image: :func:`as_rgb` returns the reason an image
cannot be scored (blank, single-coloured, tiny, NaN) and the reward scores it 0 with that
reason. Files that are missing or corrupt are a different matter — a broken sample table —
and :func:`load_image` raises an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Below this many pixels on a side no OCR model reads anything (PP-OCR's rec input is 48 px
# high; 8 px still upsamples to something legible only for the simplest glyphs).
MIN_SIDE_PX = 8
# A per-channel pixel standard deviation below this (0..255 units, averaged over channels)
# is a flat, single-coloured image.
MIN_STD = 1.0


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array ``[H, W, 3]`` of an image file; a missing or corrupt file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image file {path} cannot be read: {error}") from error


def as_rgb(image) -> tuple[np.ndarray | None, str | None]:
    """``(uint8 RGB array [H, W, 3], None)`` or ``(None, reason)`` for an unscorable image.

    Accepts a PIL image, or an array ``[H, W, 3]`` / ``[H, W]`` in uint8 (0..255) or float
    (0..1).
    """
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            return None, "bad_shape"
        array = array[..., :3]
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                return None, "nan"
            array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        else:
            array = array.astype(np.uint8)
    if min(array.shape[:2]) < MIN_SIDE_PX:
        return None, "tiny"
    if float(array.reshape(-1, 3).std(axis=0).mean()) < MIN_STD:
        return None, "blank"
    return np.ascontiguousarray(array), None


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours.

    Args:
        rgb: ``[..., 3]`` in 0..255.
    Returns:
        ``[..., 3]`` float64: L in 0..100, a and b roughly -128..127.
    """
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    # sRGB -> XYZ (D65), then normalise by the D65 white point.
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    lightness = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)
