"""What the Snakemake workflow asks of the code: stage params, stage sources, memory, GPU slots."""
