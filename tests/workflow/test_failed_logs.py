"""A rerun keeps the log of a failed attempt: Snakemake deletes a job's log before running the
job again, so the reason of a failure (a guard's message, a traceback) would be lost."""

from __future__ import annotations

import pytest
import yaml

from tests.workflow.study import copy_workflow, snakemake

pytestmark = pytest.mark.workflow


def test_a_failed_attempts_log_survives_the_rerun_and_a_success_leaves_none(tmp_path):
    folder = copy_workflow(tmp_path)
    prompts = folder / "prompts.txt"
    # Enough lines for an iteration's prompts (checked when the DAG is built), one not UTF-8.
    good = b"".join(b'A sign that reads "OPEN%d" in red letters\n' % i for i in range(80))
    prompts.write_bytes(good + b'A poster that says "\xff" in blue\n')
    config = yaml.safe_load((folder / "configs" / "flow_grpo_ocr_test.yaml").read_text())
    config["dataset"] |= {"name": "logs", "compare_with": None}
    files = config["dataset"]["source"]["files"]
    files |= {"train": str(prompts), "test": str(prompts), "train_lines": None, "test_lines": None}
    (folder / "logs.yaml").write_text(yaml.safe_dump(config))
    target = "datasets/logs/test.parquet"

    failed = snakemake(folder, target, "-c1", "--configfile", "logs.yaml", check=False)
    assert failed.returncode != 0, failed.stderr
    logs = folder / "results" / config["study"] / "logs"
    kept = sorted(logs.glob("curate_dataset_test.log.failed-*"))
    assert len(kept) == 1, sorted(p.name for p in logs.rglob("*"))
    assert "is not UTF-8" in kept[0].read_text(), kept[0].read_text()

    prompts.write_bytes(good + b'A poster that says "SALE" in blue\n')
    snakemake(folder, target, "-c1", "--configfile", "logs.yaml")
    assert sorted(logs.glob("curate_dataset_test.log.failed-*")) == kept  # no new one for a success
    assert "is not UTF-8" in kept[0].read_text()  # the failure's reason is still there
    assert "is not UTF-8" not in (logs / "curate_dataset_test.log").read_text()
