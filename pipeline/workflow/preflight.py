"""Checks of a study that need more than its config: what the DAG's build can see on disk.

Run when the DAG is built (rules/common.smk), after the config's own checks, so that a study
that could only fail inside a job stops before any job, naming the key and the sizes.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import ConfigError
from pipeline.config.types import StudyConfig
from pipeline.data.prompt_files import parse_line_range
from pipeline.rl.settings import iteration_prompt_count, method_spec


def train_prompts_at_most(cfg: StudyConfig) -> tuple[int, str] | None:
    """An upper bound on the train split's prompts (curation only drops), with where it comes
    from; ``None`` where the source file is not there yet (another check names it)."""
    source = cfg.dataset.source
    if source.kind == "generated":
        return source.generator.n_train, f"dataset.source.generator.n_train = {source.generator.n_train}"
    path = Path(source.files.train)
    if not path.is_file():
        return None
    # Newlines counted in bytes, not decoded: bytes that are not UTF-8 are the curation job's to
    # report (it names the line and offset), not a reason to refuse the whole DAG.
    data = path.read_bytes()
    lines = data.count(b"\n") + (not data.endswith(b"\n"))
    selected = len(parse_line_range(source.files.train_lines, lines))
    lines_key = (
        f", dataset.source.files.train_lines {source.files.train_lines!r}" if source.files.train_lines else ""
    )
    return selected, f"{selected} lines of {path}{lines_key}"


def check_train_prompts(cfg: StudyConfig, source: str) -> None:
    """Every method's iteration samples distinct prompts of the train split without replacement:
    refuse one that needs more prompts than the split can hold."""
    bound = train_prompts_at_most(cfg)
    if bound is None:
        return
    available, origin = bound
    for name, method in cfg.methods.items():
        train = cfg.method_train(name)
        wanted = iteration_prompt_count(train, method_spec(method, cfg.sampling.train_steps, train.sde_steps))
        if wanted > available:
            tree_note = (
                f" (method {name!r} samples {wanted} at a flat group's NFE, train.equal_sampling_nfe)"
                if wanted != train.prompts_per_iteration
                else ""
            )
            raise ConfigError(
                f"{source}: config key 'train.prompts_per_iteration' "
                f"({train.prompts_per_iteration}){tree_note}: "
                f"an iteration samples {wanted} distinct prompts, but the train split has at most "
                f"{available} ({origin}); lower train.prompts_per_iteration or give the split more prompts"
            )
