"""``subsample_edges``: Flow-GRPO's timestep_fraction over a forest's edges, drawn uniformly or
in proportion to the edges' loss weights (Horvitz-Thompson)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.rl.credit import inclusion_probabilities, subsample_edges


def draw(edges, fraction, seed=0, sampling="uniform", weights=None):
    weights = torch.ones(int(edges.max()) + 1 if len(edges) else 0) if weights is None else weights
    return subsample_edges(edges, weights, fraction, sampling, np.random.default_rng(seed))


@pytest.mark.parametrize("sampling", ["uniform", "weighted"])
def test_fraction_one_keeps_every_edge_and_its_weight(sampling):
    edges, weights = torch.tensor([3, 5, 8]), torch.rand(9)
    kept, kept_weights = draw(edges, 1.0, sampling=sampling, weights=weights)
    assert torch.equal(kept, edges) and torch.equal(kept_weights, weights)


@pytest.mark.parametrize("sampling", ["uniform", "weighted"])
def test_half_keeps_half_of_the_ids_sorted_and_distinct(sampling):
    edges = torch.arange(100, 140)
    kept, _ = draw(edges, 0.5, sampling=sampling)
    assert len(kept) == 20
    assert torch.equal(kept, torch.unique(kept))  # sorted, no repeats
    assert set(kept.tolist()) <= set(edges.tolist())


def test_tiny_fraction_keeps_one_and_empty_stays_empty():
    assert len(draw(torch.arange(7), 0.01)[0]) == 1
    assert len(draw(torch.arange(0), 0.5)[0]) == 0


def test_same_seed_same_draw_other_seed_other_draw():
    edges = torch.arange(64)
    first, again = draw(edges, 0.25, [0, 3, 2])[0], draw(edges, 0.25, [0, 3, 2])[0]
    other = draw(edges, 0.25, [0, 4, 2])[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_every_edge_is_drawn_about_equally_often():
    edges = torch.arange(10)
    rng = np.random.default_rng(1)
    counts = np.zeros(10)
    for _ in range(2000):
        counts[subsample_edges(edges, torch.ones(10), 0.3, "uniform", rng)[0].numpy()] += 1
    # 3 of 10 per draw: 600 expected per edge, binomial std ~20
    assert np.all(np.abs(counts - 600) < 100), counts


def test_inclusion_probabilities_by_hand():
    # count 2 over weights 4, 1, 1, 2: 4 alone would get 2 * 4 / 8 = 1, so it is certain; the
    # other count of 1 is shared 1 : 1 : 2 by the rest.
    pi = inclusion_probabilities(torch.tensor([4.0, 1.0, 1.0, 2.0]), 2)
    assert torch.allclose(pi, torch.tensor([1.0, 0.25, 0.25, 0.5], dtype=torch.float64))
    # a weight over the whole count: capped at 1 and the rest share what is left
    pi = inclusion_probabilities(torch.tensor([10.0, 1.0, 1.0]), 2)
    assert torch.allclose(pi, torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))


def test_weighted_draws_in_proportion_and_keeps_the_loss_unbiased():
    # A tree's edges: two root edges over half the leaves each, eight leaf edges over one each.
    weights = torch.tensor([0.5, 0.5] + [0.125] * 8)
    edges = torch.arange(10)
    rng = np.random.default_rng(3)
    counts, estimate = np.zeros(10), np.zeros(10)
    rounds = 4000
    for _ in range(rounds):
        kept, adjusted = subsample_edges(edges, weights, 0.3, "weighted", rng)
        assert len(kept) == 3  # systematic sampling: exactly the count
        counts[kept.numpy()] += 1
        estimate[kept.numpy()] += adjusted[kept].numpy()
    expected = inclusion_probabilities(weights, 3).numpy()  # 3 * w / 2: 0.75 and 0.1875
    assert np.allclose(expected, [0.75, 0.75] + [0.1875] * 8)
    assert np.allclose(counts / rounds, expected, atol=0.03)
    # Horvitz-Thompson: each edge's expected weight in the loss is its own weight.
    assert np.allclose(estimate / rounds, weights.numpy(), atol=0.02)


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="edge sampling 'pps'"):
        draw(torch.arange(4), 0.5, sampling="pps")
