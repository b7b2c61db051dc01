"""The mini model's character position map, cell coordinates and templates agree with the
renderer's layout."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.render import Layout, render_word
from pipeline.models.mini import MiniConfig, MiniModel, MiniTokenizer


def _model(**overrides) -> MiniModel:
    layout = Layout()
    config = MiniConfig(
        d_model=16,
        text_layers=1,
        block_out_channels=(8, 16),
        attention_head_dim=8,
        left_px=float(layout.left_px),
        advance_px=float(layout.advance_px),
        **overrides,
    )
    return MiniModel(config)


def test_each_rendered_character_lies_in_its_band():
    model = _model()
    for index in range(6):
        image = render_word(" " * index + "W", (0, 0, 0), (255, 255, 255))
        ink_columns = np.nonzero((image < 128).any(axis=(0, 2)))[0]
        bands = set(model.column_char[torch.from_numpy(ink_columns)].tolist())
        assert bands == {index}, f"character {index} drawn over bands {bands}"


def test_map_paints_character_embeddings_and_coordinates():
    model = _model(cell_coordinates=True)
    ids = MiniTokenizer(model.config.max_text_len)(['The color of the text "AB" is red.'])
    painted = model.position_map(ids)
    m = model.config.position_map_channels
    assert painted.shape == (1, m + 2, 32, 128)
    first = model.char_map(ids[:, 1])[0]  # embedding of "A"
    band0 = (model.column_char == 0).nonzero().flatten()
    assert torch.allclose(painted[0, :m, 5, band0], first[:, None].expand(-1, len(band0)))
    phase = painted[0, m, 0]
    assert torch.all(phase[model.column_char < 0] == 0)
    assert torch.all(torch.diff(phase[band0]) > 0) and phase[band0].max() < 1
    assert painted[0, m + 1, 0, 0] == -1 and painted[0, m + 1, -1, 0] == 1
    assert _model().position_map(ids).shape[1] == m  # no coordinates unless asked


def test_templates_paint_each_character_cell_column_by_column():
    """Template channels hold, at pixel (y, x) of character i's band, column ``x - left edge
    of cell i`` of that character's learned template, and zero outside the text."""
    model = _model(cell_coordinates=True, template_channels=2)
    with torch.no_grad():
        model.templates.copy_(torch.arange(model.templates.numel()).reshape(model.templates.shape).float())
    ids = MiniTokenizer(model.config.max_text_len)(['The color of the text "AB" is red.'])
    painted = model.position_map(ids)[0, -2:]  # [2, H, W]
    config = model.config
    for index, token in enumerate(ids[0, 1:3].tolist()):
        for x in range(128):
            left = config.left_px + index * config.advance_px
            if left <= x + 0.5 < left + config.advance_px:
                cell_x = int(x + 0.5 - left)  # pixel column inside the cell
                assert torch.equal(painted[:, :, x], model.templates[token, :, :, cell_x]), (index, x)
    outside = model.column_char < 0
    assert torch.all(painted[:, :, outside] == 0)
    assert painted.shape == (2, 32, 128)
