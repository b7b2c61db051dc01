# Multi-GRPO study: curate prompts, (pretrain the mini model,) RL-train every method, sample,
# score and report, every job tracked in MLflow. Stages live in rules/<stage>.smk, helpers in
# rules/common.smk; the default study is config.yaml, others are in configs/.
from snakemake.utils import min_version

from pipeline.config.files import read_yaml

min_version("9.0")

# Parsed strictly before Snakemake's own loader, whose errors name neither file nor line.
read_yaml("config.yaml")


configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    split="|".join(SPLITS),
    method="|".join(CFG.methods) or "none",
    seed=r"\d+",
    model="|".join(MODELS),


include: "rules/tracking.smk"
include: "rules/dataset.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


onstart:
    check_train_launch(workflow.dag)


rule all:
    default_target: True
    input:
        study_targets(),
