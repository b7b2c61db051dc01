"""The weight average's schedules and the loss's detached unconditional branch, against hand
computations."""

from fractions import Fraction

import pytest
import torch

from pipeline.models.ema import Ema, ema_decay_at, without_averages
from pipeline.models.policy import Conditioning
from pipeline.sampling.tree import guided_velocity


def run_schedule(ema: Ema, param: torch.nn.Parameter, steps: range) -> None:
    """Optimizer step ``s`` sets the parameter to ``s``, then the average sees it."""
    for step in steps:
        with torch.no_grad():
            param.fill_(float(step))
        ema.update()


def test_every_step_without_warm_up_is_the_plain_recurrence():
    param = torch.nn.Parameter(torch.zeros(2))
    ema = Ema([param], decay=0.5)
    run_schedule(ema, param, range(1, 4))
    # 0 -> 0.5 * 0 + 0.5 * 1 = 0.5 -> 0.5 * 0.5 + 0.5 * 2 = 1.25 -> 0.625 + 1.5 = 2.125
    assert ema.shadow[0].tolist() == [2.125, 2.125]


def test_flow_grpo_schedule_updates_after_steps_7_15_23_with_the_warm_up_decay():
    param = torch.nn.Parameter(torch.zeros(1))
    ema = Ema([param], decay=0.9, every=8, warmup=True)
    run_schedule(ema, param, range(1, 24))
    expected = Fraction(0)
    for step in (7, 15, 23):  # (step + 1) % 8 == 0; decay (1 + s) / (10 + s), all below 0.9
        decay = Fraction(1 + step, 10 + step)
        expected = decay * expected + (1 - decay) * step
    assert ema.steps == 23
    assert ema.shadow[0].item() == pytest.approx(float(expected), rel=1e-6)
    run_schedule(ema, param, range(24, 31))  # no update before step 31
    assert ema.shadow[0].item() == pytest.approx(float(expected), rel=1e-6)


def test_warm_up_decay_reaches_the_configured_decay_at_step_80():
    assert ema_decay_at(1, 0.9, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay_at(79, 0.9, warmup=True) == pytest.approx(80 / 89)
    assert ema_decay_at(80, 0.9, warmup=True) == 0.9
    assert ema_decay_at(1, 0.9, warmup=False) == 0.9


def test_a_restored_average_continues_the_schedule_exactly():
    param = torch.nn.Parameter(torch.zeros(3))
    straight = Ema([param], decay=0.9, every=8, warmup=True)
    run_schedule(straight, param, range(1, 41))

    param = torch.nn.Parameter(torch.zeros(3))
    first = Ema([param], decay=0.9, every=8, warmup=True)
    run_schedule(first, param, range(1, 20))
    saved = {k: v.clone() for k, v in first.checkpoint_tensors().items()}
    assert list(without_averages(saved | {"w": param.detach()})) == ["w"]
    resumed = Ema([param], decay=0.9, every=8, warmup=True)
    resumed.restore(saved)
    run_schedule(resumed, param, range(20, 41))
    assert resumed.steps == straight.steps == 40
    assert torch.equal(resumed.shadow[0], straight.shadow[0])


class LinearPolicy:
    """Velocity ``w * e`` for conditioning value ``e``: ``dv/dw = e`` per branch."""

    def __init__(self):
        self.weight = torch.nn.Parameter(torch.tensor(2.0))

    def velocity(self, latents, sigma, cond: Conditioning):
        return self.weight * cond.tensors["e"].view(-1, 1, 1, 1) * torch.ones_like(latents)


@pytest.mark.parametrize("detach", [True, False])
def test_loss_cfg_gradient_with_and_without_the_detached_unconditional_branch(detach):
    policy, guidance = LinearPolicy(), 4.5
    cond, uncond = Conditioning({"e": torch.tensor([3.0])}), Conditioning({"e": torch.tensor([1.0])})
    latents = torch.zeros(1, 1, 1, 1)
    v, rows = guided_velocity(policy, latents, torch.ones(1), cond, uncond, guidance, 2, detach_uncond=detach)
    v.sum().backward()
    # v = w u + g (w c - w u) = 2 + 4.5 * (6 - 2) = 20 either way; the gradient differs:
    # detached, dv/dw = g c = 13.5; else dv/dw = u + g (c - u) = 1 + 4.5 * 2 = 10.
    assert v.item() == pytest.approx(20.0) and rows == 2
    assert policy.weight.grad.item() == pytest.approx(13.5 if detach else 10.0)
