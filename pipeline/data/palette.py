"""The ten OCR-Color-10 colours: names and one canonical sRGB value each.

The canonical RGB is what the dataset records for a colour name (and what a renderer uses
when it needs one value); the colour reward measures distance to these in CIELAB.
"""

from __future__ import annotations

# Order follows the published test split's colour frequency (red most common); it is only
# used to give tables a stable column order.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "purple": (128, 40, 160),
    "blue": (30, 70, 220),
    "green": (30, 150, 50),
    "white": (255, 255, 255),
    "pink": (255, 120, 180),
    "yellow": (250, 220, 30),
    "brown": (130, 80, 40),
    "orange": (250, 140, 20),
    "black": (0, 0, 0),
}
COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)
