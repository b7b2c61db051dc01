"""Sampling: the SDE step with log-probabilities and the tree sampler."""

from pipeline.sampling.sde import SdeStep, sde_step_with_logprob

__all__ = ["SdeStep", "sde_step_with_logprob"]
