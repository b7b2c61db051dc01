"""GRPO maths (advantages, loss) and the training loop."""
