"""One module per Snakemake rule, named as the rule: ``python -m pipeline.stages.<rule>``."""
