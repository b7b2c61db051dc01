"""The paper-scale configs plan their studies (also under the SLURM profile) when the local
files exist, and stop with an error naming the missing path's config key when they do not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.workflow.study import copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.workflow

SHARED_OCR = Path(__file__).resolve().parents[3] / "shared" / "data" / "flow_grpo_ocr_test.txt"
SHARED_CAPTIONS = Path(__file__).resolve().parents[3] / "shared" / "data" / "pickscore_sfw_test.txt"


def _lines(path: Path, fallback: list[str]) -> str:
    """Real prompts from ../shared where present (the plan does not read them), else a few."""
    # The stand-in repeats its lines: an iteration's prompts must fit the split (checked by the DAG).
    return path.read_text(encoding="utf-8") if path.is_file() else "\n".join(fallback * 200) + "\n"


def provide_local_files(folder: Path, config: str) -> None:
    """The files a user of ``config`` provides, as stand-ins (a dry run only checks they exist)."""
    for model in ("PickScore_v1", "CLIP-ViT-H-14-laion2B-s32B-b79K"):
        (folder / "models" / model).mkdir(parents=True, exist_ok=True)
    if config == "paper_ocr_color":
        ocr = _lines(SHARED_OCR, ['A sign that reads "OPEN" in red letters'])
        for split in ("train", "test"):
            path = folder / "data" / "flow_grpo" / "ocr" / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(ocr, encoding="utf-8")
        model = folder / "models" / "stable-diffusion-3.5-medium"
    else:
        captions = _lines(SHARED_CAPTIONS, ["a small red boat drifting on a calm lake at dawn"])
        for split in ("train", "test"):
            path = folder / "data" / "pickscore" / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(captions, encoding="utf-8")
        model = folder / "models" / "FLUX.1-dev"
    model.mkdir(parents=True, exist_ok=True)
    (model / "model_index.json").write_text("{}\n")


@pytest.mark.parametrize(
    ("config", "missing_key", "missing_path"),
    [
        ("paper_ocr_color", "dataset.source.files.train", "data/flow_grpo/ocr/train.txt"),
        ("paper_pickscore", "dataset.source.files.train", "data/pickscore/train.txt"),
    ],
)
def test_missing_local_files_are_named(tmp_path, config, missing_key, missing_path):
    folder = copy_workflow(tmp_path)
    result = snakemake(folder, "-n", "--configfile", f"configs/{config}.yaml", check=False)
    assert result.returncode != 0
    message = f"config key {missing_key!r}: file {missing_path!r} does not exist"
    assert message in result.stdout + result.stderr


def test_missing_model_folder_is_named(tmp_path):
    folder = copy_workflow(tmp_path)
    provide_local_files(folder, "paper_pickscore")
    (folder / "models" / "FLUX.1-dev" / "model_index.json").unlink()
    (folder / "models" / "FLUX.1-dev").rmdir()
    result = snakemake(folder, "-n", "--configfile", "configs/paper_pickscore.yaml", check=False)
    assert result.returncode != 0
    assert "config key 'model.path': local folder 'models/FLUX.1-dev' does not exist" in (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "paper_ocr_color",
            # the base, 4 runs, and the 2 flat runs at the tree's NFE
            {"curate_dataset": 2, "dataset_card": 1, "train": 4, "sample_eval": 7, "score": 7, "report": 1},
        ),
        (
            "paper_pickscore",
            {"curate_captions": 2, "dataset_card": 1, "train": 2, "sample_eval": 4, "score": 4, "report": 1},
        ),
    ],
)
def test_paper_config_plans_the_full_study(tmp_path, config, expected):
    folder = copy_workflow(tmp_path)
    provide_local_files(folder, config)
    jobs = planned_jobs(folder, "--configfile", f"configs/{config}.yaml")
    assert {rule: jobs[rule] for rule in expected} == expected
    assert "pretrain_base" not in jobs  # paper models are loaded, not pretrained


def test_slurm_profile_dry_run_requests_cluster_resources(tmp_path):
    folder = copy_workflow(tmp_path)
    provide_local_files(folder, "paper_ocr_color")
    result = snakemake(
        folder, "-n", "--workflow-profile", "profiles/slurm", "--configfile", "configs/paper_ocr_color.yaml"
    )
    out = result.stdout + result.stderr
    assert "Using workflow specific profile profiles/slurm" in out
    train = re.search(r"rule train:.*?resources: ([^\n]*)", out, re.S)
    assert train, out[-2000:]
    resources = dict(item.split("=", 1) for item in train.group(1).split(", "))
    assert resources["slurm_partition"] == "<partition>" and resources["slurm_account"] == "<account>"
    assert int(resources["runtime"]) >= 2880 and int(resources["cpus_per_task"]) == 16
    # 8 GPUs on each of 4 nodes (--gres is per node), one task per node, no task per GPU
    assert (resources["gres"], resources["nodes"], resources["tasks"], resources["tasks_per_gpu"]) == (
        "gpu:8",
        "4",
        "4",
        "0",
    )
    assert int(resources["gpu"]) == 0  # --gpus would be the job's total: not beside --gres
    card = re.search(r"rule dataset_card:.*?resources: ([^\n]*)", out, re.S)
    assert "gpu=0" in card.group(1)  # CPU rules stay small


def test_mini_gpu_config_plans_six_seeds_of_every_method(tmp_path):
    folder = copy_workflow(tmp_path)
    jobs = planned_jobs(
        folder, "--configfile", "configs/mini_gpu.yaml", "--cores", "16", "--resources", "gpu=6"
    )
    assert {rule: jobs[rule] for rule in ("pretrain_base", "train", "sample_eval", "score", "report")} == {
        "pretrain_base": 1,
        "train": 30,  # 5 methods (the control arm included) x 6 seeds, each its own job
        "sample_eval": 31,  # the base model and 30 runs (trees sample at the flat arms' NFE)
        "score": 31,
        "report": 1,
    }


def test_mini_seeds_config_plans_three_seeds_in_the_default_studys_folder(tmp_path):
    folder = copy_workflow(tmp_path)
    default = planned_jobs(folder)
    seeds = planned_jobs(folder, "--configfile", "configs/mini_seeds.yaml")
    assert (default["train"], seeds["train"]) == (5, 15)  # 5 methods x 1 seed, x 3 seeds
    # The base model besides the runs (trees sample at the flat arms' NFE: no truncated flat runs).
    assert (default["sample_eval"], seeds["sample_eval"]) == (5 + 1, 15 + 1)
    assert seeds["pretrain_base"] == default["pretrain_base"] == 1
    out = snakemake(folder, "-n", "--configfile", "configs/mini_seeds.yaml").stdout
    runs = set(re.findall(r"results/([\w]+)/train/\w+/seed(\d)/metrics\.parquet", out))
    # The default's study name, so seed 0 and the base model are the default study's own jobs.
    assert runs == {("mini_ocr_color", seed) for seed in "012"}


def job_resources(out: str, rule: str) -> list[dict[str, str]]:
    """The ``resources:`` of every planned job of ``rule`` in a dry run's printout."""
    blocks = re.findall(rf"rule {rule}:\n(.*?)(?:\n\n|\Z)", out, re.S)
    found = [re.search(r"resources: ([^\n]*)", block) for block in blocks]
    return [dict(item.split("=", 1) for item in match.group(1).split(", ")) for match in found if match]


def one_node(folder: Path) -> str:
    """The shipped overlay that runs the paper config's training on one 8-GPU node."""
    assert (folder / "configs" / "one_node.yaml").is_file()
    return "configs/one_node.yaml"


def test_each_train_job_of_the_paper_config_is_one_job_of_four_nodes(tmp_path):
    folder = copy_workflow(tmp_path)
    provide_local_files(folder, "paper_ocr_color")
    result = snakemake(folder, "-n", "--configfile", "configs/paper_ocr_color.yaml")
    out = result.stdout + result.stderr
    trains = job_resources(out, "train")
    assert len(trains) == 4
    for job in trains:  # the SLURM executor plugin's resources for one allocation over 4 nodes
        assert (job["nodes"], job["tasks"], job["tasks_per_gpu"], job["gres"], job["mpi"]) == (
            "4",
            "4",
            "0",
            "gpu:8",
            "srun",
        )
    launch = (
        "srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --gres=gpu:8 --cpus-per-task=2 --kill-on-bad-exit=1 "
        "--label python -u -m pipeline.stages.train"
    )
    assert out.count(launch) == 4 and out.count("--nproc 8 --nnodes 4 ") == 4
    assert "gpu_slots 8 -- python -u -m pipeline.stages.train" not in out
    for method in ("flow_grpo", "reward_group", "tree_grpo", "multi_grpo"):  # said before any job
        assert f"train {method}/seed0: 4 nodes x 8 GPUs = 32 ranks" in out
    assert "training, per rank (microbatch 9): est. 48 GB" in out


def test_eight_gpus_on_one_node_give_each_train_job_eight_ranks_and_pickscore_its_gpu(tmp_path):
    folder = copy_workflow(tmp_path)
    provide_local_files(folder, "paper_ocr_color")
    config = ("--configfile", "configs/paper_ocr_color.yaml", one_node(folder))
    result = snakemake(folder, "-n", *config, "--resources", "gpu=8")
    out = result.stdout + result.stderr
    trains = job_resources(out, "train")
    assert len(trains) == 4 and {job["gpu"] for job in trains} == {"8"}  # train.gpus, granted whole
    assert not any("nodes" in job or "mpi" in job for job in trains)
    assert out.count("--nproc 8 ") == 4 and "srun" not in out and "nodes x" not in out
    assert "pipeline.workflow.gpu_slots 8 -- python -u -m pipeline.stages.train" in out
    assert {job["gpu"] for job in job_resources(out, "score")} == {"1"}  # PickScore on the GPU
    assert {job["gpu"] for job in job_resources(out, "sample_eval")} == {"1"}
    assert "training, per rank (microbatch 9): est. 48 GB" in out  # printed before any job


def test_the_mini_study_scores_on_the_cpu(tmp_path):
    result = snakemake(copy_workflow(tmp_path), "-n")
    assert {job["gpu"] for job in job_resources(result.stdout + result.stderr, "score")} == {"0"}


def test_a_self_contained_config_that_leaves_a_key_to_config_yaml_is_stopped(tmp_path):
    folder = copy_workflow(tmp_path)
    provide_local_files(folder, "paper_ocr_color")
    path = folder / "configs" / "paper_ocr_color.yaml"
    text = path.read_text()
    path.write_text(re.sub(r"\n  gpus: 8[^\n]*", "", text).replace("  alpha: 0.05\n", ""))
    result = snakemake(folder, "-n", "--configfile", "configs/paper_ocr_color.yaml", check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "self_contained, yet 2 keys it uses come from config.yaml: train.gpus (1), report.alpha (0.05)" in out
    )


def test_a_gpu_cap_below_train_gpus_is_said_before_the_run(tmp_path):
    folder = copy_workflow(tmp_path)
    provide_local_files(folder, "paper_ocr_color")
    config = ("--configfile", "configs/paper_ocr_color.yaml", one_node(folder))
    result = snakemake(folder, "-n", *config)  # the workstation profile's gpu: 1
    out = result.stdout + result.stderr
    assert "note: train.gpus is 8 but --resources gpu=1: each training job runs 1 rank(s)" in out
    assert out.count("--nproc 1 ") == 4
