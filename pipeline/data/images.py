"""Image checks and conversions shared by the rewards, pretraining's renderer and the reports.

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


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of any PIL mode, values scaled from the mode's own range.

    PIL's ``convert("RGB")`` clips 16- and 32-bit greyscale (``I;16``, ``I``) to 255, which
    turns a 16-bit PNG of text into a white page; those are scaled by their bit depth
    instead (65535 -> 255), float images (``F``) from 0..1. Transparent images are laid on
    white, as a viewer shows them.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.asarray(image, dtype=np.float64)
        return np.repeat(_to_uint8(grey / 257.0)[..., None], 3, axis=-1)
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        return np.repeat(_to_uint8(grey * 255.0)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array ``[H, W, 3]`` of an image file (:func:`pil_to_rgb`); a missing file is
    FileNotFoundError, a corrupt, truncated or empty one ValueError, each naming the file. So is
    a decompression bomb: more pixels than PIL's limit (``Image.MAX_IMAGE_PIXELS``) is refused
    before decoding, whatever the file's size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"image file {path} cannot be read: {error}") from error


def as_rgb(image) -> tuple[np.ndarray | None, str | None]:
    """``(uint8 RGB array [H, W, 3], None)`` or ``(None, reason)`` for an unscorable image.

    Accepts a PIL image (any mode, :func:`pil_to_rgb`), or an array ``[H, W, 3]`` /
    ``[H, W]`` in uint8 (0..255), uint16 (0..65535) or float (0..1); other integer arrays
    must hold 0..255 (else ``out_of_range``).
    """
    if isinstance(image, Image.Image):
        array = pil_to_rgb(image)
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
        elif array.dtype == np.uint16:
            array = _to_uint8(array / 257.0)
        elif array.dtype != np.uint8:
            if array.size and (array.min() < 0 or array.max() > 255):
                return None, "out_of_range"
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


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """``[N, H, W, 3]`` -> one uint8 grid image (rows of ``columns``; blank cells padded)."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * h, columns * w, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = image
    return grid
