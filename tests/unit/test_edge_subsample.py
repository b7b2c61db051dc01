"""``subsample_edges``: Flow-GRPO's timestep_fraction over a forest's edges."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.rl.trainer import subsample_edges


def test_fraction_one_keeps_every_edge():
    edges = torch.tensor([3, 5, 8])
    assert torch.equal(subsample_edges(edges, 1.0, np.random.default_rng(0)), edges)


def test_half_keeps_half_of_the_ids_sorted_and_distinct():
    edges = torch.arange(100, 140)
    kept = subsample_edges(edges, 0.5, np.random.default_rng(0))
    assert len(kept) == 20
    assert torch.equal(kept, torch.unique(kept))  # sorted, no repeats
    assert set(kept.tolist()) <= set(edges.tolist())


def test_tiny_fraction_keeps_one_and_empty_stays_empty():
    assert len(subsample_edges(torch.arange(7), 0.01, np.random.default_rng(0))) == 1
    assert len(subsample_edges(torch.arange(0), 0.5, np.random.default_rng(0))) == 0


def test_same_seed_same_draw_other_seed_other_draw():
    edges = torch.arange(64)
    first = subsample_edges(edges, 0.25, np.random.default_rng([0, 3, 2]))
    again = subsample_edges(edges, 0.25, np.random.default_rng([0, 3, 2]))
    other = subsample_edges(edges, 0.25, np.random.default_rng([0, 4, 2]))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_every_edge_is_drawn_about_equally_often():
    edges = torch.arange(10)
    rng = np.random.default_rng(1)
    counts = np.zeros(10)
    for _ in range(2000):
        counts[subsample_edges(edges, 0.3, rng).numpy()] += 1
    # 3 of 10 per draw: 600 expected per edge, binomial std ~20
    assert np.all(np.abs(counts - 600) < 100), counts
