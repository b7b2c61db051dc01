"""Multi-GRPO study pipeline: every stage is a CLI module ``python -m pipeline.stages.<rule>``."""
