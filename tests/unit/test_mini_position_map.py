"""The mini model's character position map and cell coordinates agree with the renderer."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.models.mini import MiniConfig, MiniModel, MiniTokenizer
from pipeline.render import Layout, render_word


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
