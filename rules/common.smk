# Helpers shared by all rules files (the validated config, per-stage sources and params, and
# the study's target list); no rules here.
import json
import shlex
import shutil
import sys
from pathlib import Path

from pipeline.config.audit import check_self_contained
from pipeline.config.files import canonical_json, read_yaml
from pipeline.config.load import check_rewards
from pipeline.config.load import load as load_config
from pipeline.config.schema import ConfigError, coerce_strings, with_schema_defaults
from pipeline.workflow import memory as study_memory
from pipeline.workflow import sources as study_sources
from pipeline.workflow import stage_params as stage_json
from pipeline.workflow.environment import interpreter_first_on_path
from pipeline.workflow.preflight import check_train_prompts
from pipeline.rewards import REWARDS

# Job shells run `python -m pipeline.stages.<rule>`: make that this Snakemake's own interpreter.
interpreter_first_on_path()

# Every config file read again strictly first: a duplicate key (which Snakemake's loader
# silently resolves to the last value) or a syntax error names its file and line.
for _configfile in workflow.configfiles:
    read_yaml(_configfile)
# Nested --config overrides arrive as strings ('report={grid_prompts: 6}' gives "6"): read
# them as the schema's numbers, booleans and nulls. Then validated when the DAG is built: a
# bad key, type or value fails here, before any job.
config.update(coerce_strings(config))
CFG = load_config(config, source="the study config")
check_rewards(CFG, REWARDS, source="the study config")
check_train_prompts(CFG, source="the study config")
# A self_contained study (the paper configs) takes no used key from config.yaml: what its
# --configfile files and --config state is all it may rely on.
check_self_contained(
    with_schema_defaults(config),
    dict(workflow.config_settings.overwrite_config),
    source=f"the study config ({', '.join(map(str, workflow.overwrite_configfiles)) or 'config.yaml'})",
    reward_sections={name: reward.config_sections for name, reward in REWARDS.items()},
)

# Paper-scale studies: the estimated GPU memory per job, before any job runs.
if CFG.model.backend != "mini":
    print(study_memory.report(CFG), file=sys.stderr)
# On one node train.gpus is the ranks of a training job; a smaller --resources gpu cap lowers
# them (the results do not change, the time does): say so rather than run 1 rank of 8 in
# silence. A multi-node job's GPUs are its SLURM allocation's, outside the cap.
_gpu_cap = workflow.global_resources.get("gpu")
_gpu_cap = getattr(_gpu_cap, "value", _gpu_cap)
if (
    isinstance(_gpu_cap, int)
    and _gpu_cap < CFG.train.gpus
    and CFG.model.backend != "mini"
    and CFG.train.nodes == 1
):
    print(
        f"note: train.gpus is {CFG.train.gpus} but --resources gpu={_gpu_cap}: each training job "
        f"runs {_gpu_cap} rank(s); pass --resources gpu={CFG.train.gpus} on an {CFG.train.gpus}-GPU node",
        file=sys.stderr,
    )

DATASET_DIR = f"datasets/{CFG.dataset.name}"
RESULTS = f"results/{CFG.study}"
MLFLOW_RECORD = f"{RESULTS}/mlflow_experiment.json"
SPLITS = ("train", "test")


BASE_DIR = f"{RESULTS}/base_model"
# The base model's within-group reward spreads under the training sampler (base_group_spreads).
SPREADS = f"{BASE_DIR}/card/group_spreads.json"

# Every job that may use a GPU starts through the slot allocator (pipeline.workflow.gpu_slots): it
# takes resources.gpu devices no other running job holds and pins the job to them.
GPU_SLOTS = "python -m pipeline.workflow.gpu_slots {resources.gpu} -- "
# A training job's processes: train.gpus on each of train.nodes nodes. One node: the slot
# allocator, then the stage, which starts its ranks through torchrun. Several nodes: one SLURM
# allocation (the executor plugin's resources below) whose command starts the stage once per
# node through srun, each copy a torchrun agent meeting the others on the first node
# (pipeline.rl.launch); srun's --label prefixes each line of the job's log with its node's task.
MULTI_NODE = CFG.train.nodes > 1
if MULTI_NODE:
    TRAIN_RESOURCES = {
        "nodes": CFG.train.nodes,
        "tasks": CFG.train.nodes,  # one torchrun agent per node
        "tasks_per_gpu": 0,  # else the plugin adds --ntasks-per-gpu=<tasks>: a task per GPU
        "gres": f"gpu:{CFG.train.gpus}",  # per node; the gpu resource (--gpus) is the job's total
        "mpi": "srun",  # the plugin leaves the command unwrapped; it runs its own srun
    }
    TRAIN_LAUNCH = (
        "{resources.mpi} --nodes={resources.nodes} --ntasks={resources.tasks} --ntasks-per-node=1 "
        "--gres={resources.gres} --cpus-per-task={threads} --kill-on-bad-exit=1 --label "
    )
    TRAIN_PROCESSES = f"--nproc {CFG.train.gpus} --nnodes {CFG.train.nodes}"
else:
    TRAIN_RESOURCES = {"gpu": CFG.train.gpus}
    TRAIN_LAUNCH = GPU_SLOTS
    TRAIN_PROCESSES = "--nproc {resources.gpu}"


def check_train_launch(dag):
    """Stop before any job when a multi-node train job would start on this machine without
    SLURM (run from ``onstart``: after the DAG, never in a dry run, which needs no cluster).
    """
    if not MULTI_NODE or not workflow.local_exec or shutil.which("srun"):
        return
    planned = [job for job in dag.needrun_jobs() if job.rule.name == "train"]
    if planned:
        raise ConfigError(
            f"config key 'train.nodes' ({CFG.train.nodes}): a multi-node training job runs under SLURM "
            f"(srun is not on PATH here), and {len(planned)} train job(s) are planned; run with "
            "--workflow-profile profiles/slurm on the cluster, or set train.nodes to 1"
        )


# The score stage needs a GPU only for a model reward (PickScore); OCR runs on the CPUs.
SCORE_GPUS = int(any(REWARDS[name].on_device for name in CFG.rewards.score))


def keep_failed_log(command):
    """``command`` with its output in the job's log, and the log of a failed attempt kept.

    Snakemake deletes a job's log before it runs the job again. A hard link made before the
    command starts, ``<log>.failed-<UTC time>``, shares the log's contents and outlives that
    deletion; a command that succeeds removes it, so only failed (or killed) attempts stay.
    """
    return (
        'attempt={log:q}.failed-$(date -u +%Y%m%dT%H%M%SZ); : > {log:q}; ln -f {log:q} "$attempt" || true; '
        + command
        + ' > {log:q} 2>&1 && rm -f "$attempt"'
    )


def stage_sources(rule_name):
    """The Python files ``python -m pipeline.stages.<rule_name>`` runs: its module and every
    ``pipeline`` module it imports, directly or through others (``pipeline.workflow.sources``),
    so that editing one reruns exactly the stages that run it.

    ``mlflow_init`` lists only its own module: every other rule depends on its record, so a
    shared module (``pipeline/runtime/tracking.py``) reruns the stages importing it, not the whole
    study through the record.
    """
    if rule_name == "mlflow_init":
        return ["pipeline/stages/mlflow_init.py"]
    return study_sources.stage_sources(f"pipeline.stages.{rule_name}")


def config_json(rule_name):
    """Canonical JSON of what rule ``rule_name`` reads
    (``pipeline.workflow.stage_params.<rule_name>_params``)."""
    return canonical_json(getattr(stage_json, f"{rule_name}_params")(CFG))


def runtime_json(slice_of_config):
    """A params function handing a stage its run-time settings (``pipeline.workflow.stage_params``'s
    ``*_runtime``) outside the rerun trigger: Snakemake leaves a params function that takes
    ``resources`` out of the params it compares, as derived from the job, so changing a time
    guard or a worker count reruns nothing."""

    def params(wildcards, resources):
        return canonical_json(slice_of_config(CFG))

    return params


def shell_flags(*pairs):
    """``--flag value ...`` for a shell command line, every value quoted: config-derived
    paths may hold spaces or shell syntax (``$(...)``) that must reach the stage verbatim.
    """
    return " ".join(f"{flag} {shlex.quote(str(value))}" for flag, value in pairs)


def output_dir(wildcards, output):
    """The folder of a rule's first output (for stages that take an output folder)."""
    return str(Path(output[0]).parent)


def train_card(wildcards):
    """The base model card's figures, for a method that weighs rewards by its spreads."""
    if CFG.methods[wildcards.method].inverse_std_weights:
        return SPREADS
    return []


def card_flag(wildcards, input):
    """``--card FILE`` for a method with ``inverse_std_weights``."""
    return shell_flags(("--card", input.card)) if input.card else ""


def vocab_flag(wildcards, input):
    """``--vocab FILE`` where the study's prompts come from the generator."""
    return shell_flags(("--vocab", input.vocab)) if "vocab" in input.keys() else ""


def base_model_dir():
    """The folder the RL stages start from: the pretrained mini model or the local SD3 folder."""
    return f"{BASE_DIR}/model" if CFG.model.backend == "mini" else CFG.model.path


def base_model_files(wildcards):
    """Files whose change must retrain every method."""
    if CFG.model.backend == "mini":
        return [f"{BASE_DIR}/model/model.safetensors", f"{BASE_DIR}/model/config.json"]
    return [f"{CFG.model.path}/model_index.json"]


def train_params(wildcards):
    """Canonical JSON of what decides one training run's weights."""
    return canonical_json(
        stage_json.train_params(CFG, wildcards.method, int(wildcards.seed))
    )


# The trained runs, named METHOD/seedN (their train/ and eval/ folders), and every model
# the study evaluates: the base model, every run, and with evaluation.equal_nfe_reference the
# snapshot METHOD/seedN/equal_nfe of every run without a tree.
RUNS = {f"{m}/seed{s}": (m, s) for m in CFG.methods for s in CFG.train.seeds}
# A multi-node study says each train job's layout before any job (not again inside each job).
if MULTI_NODE and not workflow.remote_exec:
    for _run in RUNS:
        print(
            f"train {_run}: {CFG.train.nodes} nodes x {CFG.train.gpus} GPUs = {CFG.train.ranks} ranks",
            file=sys.stderr,
        )
EQUAL_NFE = (
    {
        f"{run}/equal_nfe": (m, s)
        for run, (m, s) in RUNS.items()
        if not CFG.methods[m].branch_steps
    }
    if CFG.evaluation.equal_nfe_reference
    else {}
)
MODELS = ["base", *RUNS, *EQUAL_NFE]


def eval_inputs(wildcards):
    """What evaluation sampling of one model needs: the base model, and a run's weights (or,
    for an equal-NFE snapshot, its snapshots and metrics and the reference run's metrics).
    """
    inputs = {
        "test": f"{DATASET_DIR}/test.parquet",
        "base": base_model_files(wildcards),
    }
    if wildcards.model in EQUAL_NFE:
        method, seed = EQUAL_NFE[wildcards.model]
        run = f"{RESULTS}/train/{method}/seed{seed}"
        reference = CFG.evaluation.equal_nfe_reference
        inputs["snapshots"] = f"{run}/snapshots"
        inputs["own_metrics"] = f"{run}/metrics.parquet"
        inputs["match"] = f"{RESULTS}/train/{reference}/seed{seed}/metrics.parquet"
    elif wildcards.model != "base":
        inputs["weights"] = f"{RESULTS}/train/{wildcards.model}/weights.safetensors"
    return inputs


def weights_flag(wildcards, input):
    if "snapshots" in input.keys():
        return shell_flags(
            ("--snapshots", input.snapshots),
            ("--own-metrics", input.own_metrics),
            ("--match-nfe-of", input.match),
        )
    return (
        shell_flags(("--weights", input.weights)) if "weights" in input.keys() else ""
    )


def sample_eval_params(wildcards):
    """Evaluation settings; a trained run's also its adapter shape."""
    seed = (
        None if wildcards.model == "base" else {**RUNS, **EQUAL_NFE}[wildcards.model][1]
    )
    return canonical_json(stage_json.sample_eval_params(CFG, seed))


def report_inputs(wildcards):
    inputs = {
        "rewards": [f"{RESULTS}/eval/{m}/rewards.parquet" for m in MODELS],
        "samples": [f"{RESULTS}/eval/{m}/samples.parquet" for m in MODELS],
        "metrics": [f"{RESULTS}/train/{r}/metrics.parquet" for r in RUNS],
        "probes": [f"{RESULTS}/train/{r}/probe.parquet" for r in RUNS],
        "infos": [f"{RESULTS}/train/{r}/train_info.json" for r in RUNS],
    }
    if CFG.model.backend == "mini":
        inputs["base_info"] = f"{BASE_DIR}/train_info.json"
        inputs["base_card"] = f"{BASE_DIR}/card/figures.json"
    return inputs


def report_flags(wildcards, input):
    """``--rewards MODEL=FILE ...`` for every model and method, in a stable order."""
    flags = [("--rewards", f"{m}={f}") for m, f in zip(MODELS, input.rewards)]
    flags += [("--samples", f"{m}={f}") for m, f in zip(MODELS, input.samples)]
    flags += [("--metrics", f"{r}={f}") for r, f in zip(RUNS, input.metrics)]
    flags += [("--probe", f"{r}={f}") for r, f in zip(RUNS, input.probes)]
    flags += [("--train-info", f"{r}={f}") for r, f in zip(RUNS, input.infos)]
    if "base_info" in input.keys():
        flags.append(("--base-info", input.base_info))
    if "base_card" in input.keys():
        flags.append(("--base-card", input.base_card))
    return shell_flags(*flags)


def card_eval_inputs(wildcards):
    """The base model card's inputs: the base model's training record, the test split, its
    evaluation samples and scores (not sampled again), the vocabulary if any."""
    inputs = {
        "info": f"{BASE_DIR}/train_info.json",
        "test": f"{DATASET_DIR}/test.parquet",
        "samples": f"{RESULTS}/eval/base/samples.parquet",
        "rewards": f"{RESULTS}/eval/base/rewards.parquet",
    }
    if CFG.dataset.source.kind == "generated":
        inputs["vocab"] = f"{DATASET_DIR}/sources/vocab.json"
    return inputs


def wildcards_json(wildcards):
    """The job's wildcards as JSON, for the MLflow run's tags."""
    return json.dumps(dict(wildcards.items()), sort_keys=True)


def prompt_source(wildcards):
    """The prompt file that ``curate_dataset`` curates for one split."""
    if CFG.dataset.source.kind in ("files", "captions"):
        return getattr(CFG.dataset.source.files, wildcards.split)
    return f"{DATASET_DIR}/sources/{wildcards.split}.txt"


def line_range_flag(wildcards):
    """``--lines START:STOP`` where the config restricts a source file's lines."""
    if CFG.dataset.source.kind not in ("files", "captions"):
        return ""
    lines = getattr(CFG.dataset.source.files, f"{wildcards.split}_lines")
    return "" if lines is None else shell_flags(("--lines", lines))


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
        flags.append(("--vocab", input.vocab))
    if "published" in input.keys():
        flags.append(("--published", input.published))
        flags.append(("--compare-split", "test"))
        flags.append(("--compare-table", input.test_table))
    return shell_flags(*flags)


def study_targets():
    """Everything the study produces (rule ``all``)."""
    targets = [
        *(f"{DATASET_DIR}/{split}.parquet" for split in SPLITS),
        f"{DATASET_DIR}/README.md",
    ]
    if CFG.model.backend == "mini":
        targets.append(f"{BASE_DIR}/card/README.md")
    targets += [f"{RESULTS}/train/{run}/metrics.parquet" for run in RUNS]
    targets.append(f"{RESULTS}/report/index.html")
    return targets
