"""The report shows what scoring tolerated: a placeholder with the reason for an unreadable
image, and nothing from outside the study's results folder."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.reporting.figures import grid_image, sample_cells


def _study(tmp_path):
    """Results folder with the base model's 3 images: fine, garbage bytes, a link to a file
    outside; and a trained model whose table names an absolute path outside."""
    results = tmp_path / "results" / "study"
    outside = tmp_path / "secret.png"
    Image.fromarray(np.full((32, 128, 3), 7, dtype=np.uint8)).save(outside)
    base = results / "eval" / "base"
    (base / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 128, 3), dtype=np.uint8)).save(base / "images" / "0.png")
    (base / "images" / "1.png").write_bytes(b"not a png")
    (base / "images" / "2.png").symlink_to(outside)
    run = results / "eval" / "run"
    (run / "images").mkdir(parents=True)
    for line in range(3):
        Image.fromarray(np.full((32, 128, 3), 255, dtype=np.uint8)).save(run / "images" / f"{line}.png")
    rows = [{"line_id": line, "seed": 0, "prompt": f'"W{line}"'} for line in range(3)]
    samples = {
        "base": pd.DataFrame([r | {"image_path": f"images/{r['line_id']}.png"} for r in rows]),
        "run": pd.DataFrame(
            [
                r | {"image_path": str(outside) if r["line_id"] == 0 else f"images/{r['line_id']}.png"}
                for r in rows
            ]
        ),
    }
    return results, samples, {"base": base, "run": run}, outside


def test_grid_has_grey_placeholders_and_keeps_its_shape(tmp_path):
    results, samples, roots, _ = _study(tmp_path)
    grid = grid_image(samples, roots, 3, allowed=results)
    assert grid.shape == (3 * 32, 2 * 128 + 4, 3)
    assert (grid[32:64, :128] == 200).all() and (grid[64:96, :128] == 200).all()  # unreadable, link out
    assert (grid[:32, :128] == 0).all()  # the readable one
    assert (grid[:32, 132:] == 200).all()  # an absolute path outside


def test_sample_cells_name_the_reason_and_embed_nothing_from_outside(tmp_path):
    results, samples, roots, outside = _study(tmp_path)
    rewards = pd.DataFrame(columns=["model", "line_id", "seed", "reward", "score"])
    page = sample_cells(samples, roots, rewards, 3, allowed=results)
    assert page.count("data:image/png;base64,") == 3  # base 0, run 1 and 2
    assert "unreadable:" in page and page.count(f"not shown: outside {results}") == 2
    assert base64.b64encode(outside.read_bytes()).decode() not in page
