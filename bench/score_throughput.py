"""Throughput of the batch scoring stage vs the plain single-process loop, same images.

    .venv/bin/python bench/score_throughput.py [--images 48] [--repeats 3]

For scene-size images (256 x 256, OCR detection + recognition) and single-line images
(128 x 32, recognition only), prints images per second (median of the repeats) of:
  * the plain loop: one process, one OCR engine with onnxruntime's default threads, every
    reward called image by image (OCR shared through the metadata);
  * the batch stage (`pipeline.rewards.scoring.score_table`) with 1 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data.images import load_image  # noqa: E402
from pipeline.data.palette import COLOR_NAMES, PALETTE  # noqa: E402
from pipeline.data.text_images import FONTS, contrasting_background, render  # noqa: E402
from pipeline.rewards import (
    build_rewards,  # noqa: E402
    scoring,
)

NAMES = ["ocr", "color", "quality"]
WORDS = ["HELLO", "CAMERA", "TIGER", "MAPLE", "ROCKET", "SUN"]


def make_samples(
    folder: Path, n: int, size: tuple[int, int], font_px: int
) -> tuple[pd.DataFrame, list[Path]]:
    records, paths = [], []
    for i in range(n):
        word, colour = WORDS[i % len(WORDS)], COLOR_NAMES[i % len(COLOR_NAMES)]
        rgb = PALETTE[colour]
        image = render(
            word,
            rgb,
            contrasting_background(rgb),
            size=size,
            font_name=FONTS[i % len(FONTS)],
            font_px=font_px,
        )
        path = folder / f"{size[0]}x{size[1]}_{i}.png"
        Image.fromarray(image).save(path)
        records.append({"image_path": str(path), "prompt": f'A sign "{word}"', "text": word, "color": colour})
        paths.append(path)
    return pd.DataFrame(records), paths


def plain_loop(samples: pd.DataFrame, paths: list[Path]) -> None:
    rewards = build_rewards(NAMES)
    for path, prompt, text, colour in zip(paths, samples.prompt, samples.text, samples.color, strict=True):
        image, meta = load_image(path), [{"text": text, "color": colour}]
        for reward in rewards.values():
            reward.score([image], [prompt], meta)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for label, size, font_px in (
            ("scene 256x256 (det+rec)", (256, 256), 40),
            ("single-line 128x32 (rec)", (128, 32), 20),
        ):
            samples, paths = make_samples(Path(tmp), args.images, size, font_px)
            plain_loop(samples.head(2), paths[:2])  # warm-up: model load, onnxruntime init
            n = len(paths)
            loop_s = timed(lambda s=samples, p=paths: plain_loop(s, p), args.repeats)
            one_s = timed(
                lambda s=samples, p=paths: scoring.score_table(s, p, NAMES, {}, workers=1), args.repeats
            )
            two_s = timed(
                lambda s=samples, p=paths: scoring.score_table(s, p, NAMES, {}, workers=2), args.repeats
            )
            print(f"{label}: {n} images, median of {args.repeats}")
            print(f"  plain single-process loop : {n / loop_s:7.1f} img/s")
            print(f"  batch stage, 1 worker     : {n / one_s:7.1f} img/s")
            print(
                f"  batch stage, 2 workers    : {n / two_s:7.1f} img/s ({loop_s / two_s:.2f}x the plain loop)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
