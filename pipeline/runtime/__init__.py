"""What every job uses while it runs: atomic files, checkpoints, time guards, MLflow, progress."""
