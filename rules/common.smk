# Helpers shared by all rules files (the validated config, per-stage sources and params, and
# the study's target list); no rules here.
import json

from pipeline import config as study_config

# Validated when the DAG is built: a bad key, type or value fails here, before any job.
CFG = study_config.load(config, source="the study config")

DATASET_DIR = f"datasets/{CFG.dataset.name}"
RESULTS = f"results/{CFG.study}"
MLFLOW_RECORD = f"{RESULTS}/mlflow_experiment.json"
SPLITS = ("train", "test")


# The pipeline/ modules each stage runs, so that editing one reruns only the stages using it.
COMMON_SOURCES = [
    "pipeline/__init__.py",
    "pipeline/io.py",
    "pipeline/tracking.py",
    "pipeline/config.py",
]
STAGE_SOURCES = {
    "mlflow_init": ["pipeline/mlflow_init.py"],
    "generate_prompts": ["pipeline/generate_prompts.py", "pipeline/palette.py"],
    "curate": ["pipeline/curate.py", "pipeline/curation.py", "pipeline/palette.py"],
    "dataset_card": [
        "pipeline/dataset_card.py",
        "pipeline/agreement.py",
        "pipeline/curation.py",
        "pipeline/palette.py",
    ],
}


def stage_sources(stage):
    """The Python sources of ``stage`` (inputs, so that a code change reruns it)."""
    return COMMON_SOURCES + STAGE_SOURCES[stage]


def stage_params(*path):
    """Canonical JSON of the config slice at ``path`` (params trigger: a changed key reruns)."""
    node = CFG
    for key in path:
        node = getattr(node, key)
    return study_config.canonical_json(node)


def wildcards_json(wildcards):
    """The job's wildcards as JSON, for the MLflow run's tags."""
    return json.dumps(dict(wildcards.items()), sort_keys=True)


def prompt_source(wildcards):
    """The prompt file that ``curate_dataset`` curates for one split."""
    if CFG.dataset.source.kind == "files":
        return getattr(CFG.dataset.source.files, wildcards.split)
    return f"{DATASET_DIR}/sources/{wildcards.split}.txt"


def line_range_flag(wildcards):
    """``--lines START:STOP`` where the config restricts a source file's lines."""
    if CFG.dataset.source.kind != "files":
        return ""
    lines = getattr(CFG.dataset.source.files, f"{wildcards.split}_lines")
    return "" if lines is None else f"--lines {lines}"


def card_inputs(wildcards):
    """Per-split statistics, plus the vocabulary and the compared split where they exist."""
    inputs = {split: f"{DATASET_DIR}/{split}_stats.json" for split in SPLITS}
    inputs["test_table"] = f"{DATASET_DIR}/test.parquet"
    if CFG.dataset.source.kind == "generated":
        inputs["vocab"] = f"{DATASET_DIR}/sources/vocab.json"
    if CFG.dataset.compare_with is not None:
        inputs["published"] = CFG.dataset.compare_with
    return inputs


def card_flags(wildcards, input):
    """Optional flags of the card stage, from the inputs that exist for this study."""
    flags = []
    if "vocab" in input.keys():
        flags.append(f"--vocab {input.vocab}")
    if "published" in input.keys():
        flags.append(
            f"--published {input.published} --compare-split test --compare-table {input.test_table}"
        )
    return " ".join(flags)


def study_targets():
    """Everything the study produces (rule ``all``)."""
    return [
        *(f"{DATASET_DIR}/{split}.parquet" for split in SPLITS),
        f"{DATASET_DIR}/README.md",
    ]
