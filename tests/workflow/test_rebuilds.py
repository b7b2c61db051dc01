"""Exact rebuilds on the finished tiny study: a code edit plans exactly the stages that run the
edited module (and what depends on them); a config edit plans exactly the stages that read it."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from pipeline.workflow.sources import module_closure
from tests.workflow.conftest import TINY
from tests.workflow.study import config_variant, planned_jobs

pytestmark = pytest.mark.workflow

# Each rule of the tiny study; its shell command runs the module named as the rule
# (python -m pipeline.stages.<rule>). mlflow_init depends on its own module only
# (rules/common.smk says why).
RULE_ENTRY = {
    rule: f"pipeline.stages.{rule}"
    for rule in (
        "generate_prompts",
        "curate_dataset",
        "dataset_card",
        "pretrain_base",
        "base_group_spreads",
        "base_model_card",
        "train",
        "sample_eval",
        "score",
        "report",
    )
}


def _rules_running(module: str) -> set[str]:
    rules = {rule for rule, entry in RULE_ENTRY.items() if module in module_closure(entry)}
    return rules | ({"mlflow_init"} if module == "pipeline.stages.mlflow_init" else set())


def _module_name(path) -> str:
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_editing_each_module_plans_exactly_the_stages_running_it(study):
    assert planned_jobs(study, *TINY) == {}, "a complete study should plan nothing"
    # What rerunning each rule plans, from Snakemake itself: the rule and everything after it.
    downstream = {
        rule: set(planned_jobs(study, *TINY, "--forcerun", rule)) for rule in [*RULE_ENTRY, "mlflow_init"]
    }
    modules = sorted(path.relative_to(study) for path in (study / "pipeline").rglob("*.py"))
    assert len(modules) > 30
    wrong = []
    for relative in modules:
        path = study / relative
        before, text = path.stat(), path.read_text()
        # An edit, not a touch: Snakemake ignores a newer input whose checksum it recorded.
        path.write_text(text + "\n# edited by the rebuild test\n")
        try:
            planned = set(planned_jobs(study, *TINY))
        finally:
            path.write_text(text)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        expected = set().union(*(downstream[rule] for rule in _rules_running(_module_name(relative))))
        if planned != expected:
            wrong.append(f"{relative}: planned {sorted(planned)}, expected {sorted(expected)}")
    assert not wrong, "\n".join(wrong)
    assert planned_jobs(study, *TINY) == {}, "restoring the modules should plan nothing again"


@pytest.mark.parametrize("module", ["pipeline/config/audit.py", "pipeline/config/__main__.py"])
def test_an_edit_to_the_config_audit_or_its_command_plans_nothing(study, module):
    """The audit (self_contained, --effective) and the config command run when the workflow is
    planned or by hand, never inside a stage: editing them replans no job."""
    path = study / module
    text = path.read_text()
    path.write_text(text + "\n# edited by the rebuild test\n")
    try:
        assert planned_jobs(study, *TINY) == {}
    finally:
        path.write_text(text)


def test_an_evaluation_key_plans_evaluation_and_no_training(study):
    """sampling.eval_steps is read by evaluation sampling (and the base model card, which quotes
    the evaluation's sampler); training's rollouts and probe do not re-run for it."""
    planned = planned_jobs(study, "--configfile", config_variant(study, "sampling.eval_steps", 5))
    assert planned == Counter({"sample_eval": 9, "score": 9, "base_model_card": 1, "report": 1, "all": 1})


def test_a_training_key_plans_training_and_what_follows(study):
    planned = planned_jobs(study, "--configfile", config_variant(study, "train.learning_rate", 3e-4))
    # 5 runs, evaluated at their end and (the 3 flat ones) at equal NFE.
    assert planned == Counter({"train": 5, "sample_eval": 8, "score": 8, "report": 1, "all": 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.max_minutes", 7.5),
        ("train.on_time_limit", "stop"),
        ("train.stall_minutes", 45.0),
        ("train.score_workers", 0),
        ("train.channels_last", True),
        ("train.probe_every", 1),
        ("train.probe_prompts", 2),
        ("train.probe_guidance", 3.0),
        ("train.max_restarts", 2),
        ("train.rendezvous_port", 29400),
        ("pretrain.max_minutes", 9.0),
        ("pretrain.on_time_limit", "stop"),
        ("pretrain.stall_minutes", 40.0),
    ],
)
def test_a_runtime_key_plans_nothing(study, key, value):
    assert planned_jobs(study, "--configfile", config_variant(study, key, value)) == Counter()
