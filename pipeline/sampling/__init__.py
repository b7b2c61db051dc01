"""Sampling: the noise schedules, the SDE step with log-probabilities and the tree sampler."""
