# Multi-GRPO study: curate prompts, (pretrain the mini model,) RL-train every method, sample,
# score and report, every job tracked in MLflow. Stages live in rules/<stage>.smk, helpers in
# rules/common.smk; the default study is config.yaml, others are in configs/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    split="|".join(SPLITS),
    method="|".join(CFG.methods) or "none",
    model="|".join(MODELS),


include: "rules/tracking.smk"
include: "rules/dataset.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        study_targets(),
