"""The mini model: its character position map and cell coordinates agree with the renderer,
and its clean-image ("sample") prediction converts to the velocity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.mini import MiniConfig, MiniModel, MiniTokenizer, sample_to_velocity
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
                cell_x = int((x + 0.5 - left))  # pixel column inside the cell
                assert torch.equal(painted[:, :, x], model.templates[token, :, :, cell_x]), (index, x)
    outside = model.column_char < 0
    assert torch.all(painted[:, :, outside] == 0)
    assert painted.shape == (2, 32, 128)


def test_sample_prediction_converts_the_predicted_image_to_the_velocity():
    """With ``prediction="sample"`` the UNet's output is the clean image: ``x - sigma v``
    recovers it, and a perfect image prediction yields the exact target ``eps - x0``."""
    torch.manual_seed(0)
    model = _model(prediction="sample").eval()
    ids = MiniTokenizer(model.config.max_text_len)(['The color of the text "AB" is red.'] * 3)
    x0, eps = torch.rand(3, 3, 32, 128) * 2 - 1, torch.randn(3, 3, 32, 128)
    sigma = torch.tensor([1.0, 0.5, 0.2])
    noisy = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * eps
    with torch.no_grad():
        velocity = model(noisy, sigma, model.text_encoder(ids), ids)
        inputs = torch.cat([noisy, model.position_map(ids)], dim=1)
        unet_out = model.unet(
            torch.nn.functional.pixel_unshuffle(inputs, 2), sigma * 1000.0, model.text_encoder(ids)
        ).sample
    predicted_image = torch.nn.functional.pixel_shuffle(unet_out, 2)
    torch.testing.assert_close(noisy - sigma[:, None, None, None] * velocity, predicted_image)
    torch.testing.assert_close(sample_to_velocity(noisy, x0, sigma, 0.05), eps - x0)


def test_sample_prediction_floors_sigma():
    noisy, image = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    velocity = sample_to_velocity(noisy, image, torch.tensor([0.0, 0.1]), 0.05)
    assert velocity[0].unique().tolist() == [20.0] and torch.allclose(velocity[1], torch.full((3, 4, 4), 10.0))


def test_unknown_prediction_is_rejected():
    with pytest.raises(ValueError, match="'noise'"):
        MiniConfig(prediction="noise")
