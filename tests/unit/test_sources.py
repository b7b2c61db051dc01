"""Stage sources from imports: checked against what Python really loads, and on a toy package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.workflow.sources import imported_names, module_closure, sources_digest, stage_sources
from tests.conftest import REPO

# Every stage module, one per Snakemake rule.
STAGES = sorted(path.stem for path in (REPO / "pipeline" / "stages").glob("*.py") if path.stem != "__init__")


def _loaded_pipeline_modules(entry: str) -> set[str]:
    """The ``pipeline`` modules in ``sys.modules`` after importing ``entry`` in a fresh process."""
    code = f"import sys, {entry}; print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'pipeline'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("stage", STAGES)
def test_closure_holds_every_module_an_import_loads(stage):
    entry = f"pipeline.stages.{stage}"
    assert _loaded_pipeline_modules(entry) <= set(module_closure(entry))


def test_modules_the_hand_lists_missed_are_found():
    """The drift the hand-kept lists had: seeds.py (report), time_guard.py (train, pretrain),
    models/ema.py (pretrain), checkpoint.py (pretrain)."""
    assert "pipeline/reporting/seeds.py" in stage_sources("pipeline.stages.report")
    assert "pipeline/runtime/time_guard.py" in stage_sources("pipeline.stages.train")
    pretrain = set(stage_sources("pipeline.stages.pretrain_base"))
    expected = {"pipeline/runtime/time_guard.py", "pipeline/models/ema.py", "pipeline/runtime/checkpoint.py"}
    assert expected <= pretrain


@pytest.mark.parametrize("stage", STAGES)
def test_stages_run_no_config_audit_no_command_line_and_no_other_stage(stage):
    """A stage reads its config slice as JSON: the schema and types, never the validation, the
    audit or the config command (which would replan every stage when edited), nor another stage."""
    sources = set(stage_sources(f"pipeline.stages.{stage}"))
    assert not sources & {f"pipeline/config/{name}.py" for name in ("load", "audit", "__main__")}
    assert {path for path in sources if path.startswith("pipeline/stages/")} == {
        "pipeline/stages/__init__.py",
        f"pipeline/stages/{stage}.py",
    }


def test_subpackages_import_in_one_direction():
    """The layering the guide's Layout states: no two subpackages of pipeline/ import each other
    (directly or through others)."""
    reaches: dict[str, set[str]] = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if len(parts) < 3:  # pipeline/__init__.py: in no subpackage
            continue
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        others = {name.split(".")[1] for name in imported_names(module) if name.count(".")}
        reaches.setdefault(parts[1], set()).update(others - {parts[1]})
    changed = True
    while changed:  # the transitive closure of the package graph
        changed = False
        for package, targets in reaches.items():
            grown = targets | {t for target in targets for t in reaches.get(target, ())}
            changed |= grown != targets
            reaches[package] = grown
    assert not [package for package, targets in reaches.items() if package in targets]


def test_stages_do_not_depend_on_code_they_never_run():
    """Pretraining uses the mini model only; evaluation sampling scores nothing; the report
    neither samples nor scores."""
    assert not {"pipeline/models/sd3.py", "pipeline/models/flux.py"} & set(
        stage_sources("pipeline.stages.pretrain_base")
    )
    assert not any(
        path.startswith("pipeline/rewards/") for path in stage_sources("pipeline.stages.sample_eval")
    )
    report = set(stage_sources("pipeline.stages.report"))
    assert not any(path.startswith(("pipeline/models/", "pipeline/sampling/")) for path in report)


def _package(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_toy_package_forms_of_import(tmp_path):
    root = _package(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/entry.py": """
                import os
                import pipeline.a
                from pipeline import b
                from pipeline.sub import thing
                from .c import helper

                def lazy():
                    from pipeline.d import x

                if __name__ == "__main__":
                    from pipeline import e
            """,
            "pipeline/a.py": "from pipeline import f\n",
            "pipeline/b.py": "",
            "pipeline/c.py": "",
            "pipeline/d.py": "",
            "pipeline/e.py": "",
            "pipeline/f.py": 'if __name__ == "__main__":\n    import pipeline.g\n',
            "pipeline/g.py": "",
            "pipeline/sub/__init__.py": "thing = 1\n",
            "pipeline/unused.py": "",
        },
    )
    assert imported_names("pipeline.a", root) == {"pipeline", "pipeline.f"}
    closure = module_closure("pipeline.entry", root)
    # e: the entry's own main block runs; g: another module's main block never does.
    assert closure == tuple(
        sorted(
            ["pipeline", "pipeline.entry", "pipeline.a", "pipeline.b", "pipeline.c", "pipeline.d"]
            + ["pipeline.e", "pipeline.f", "pipeline.sub"]
        )
    )
    assert stage_sources("pipeline.entry", root)[:2] == ["pipeline/__init__.py", "pipeline/a.py"]
    assert "pipeline/sub/__init__.py" in stage_sources("pipeline.entry", root)


def test_the_digest_follows_the_bytes_of_every_module_run(tmp_path):
    root = _package(
        tmp_path,
        {"pipeline/__init__.py": "", "pipeline/a.py": "import pipeline.b\n", "pipeline/b.py": "x = 1\n"},
    )
    first = sources_digest("pipeline.a", root)
    assert sources_digest("pipeline.a", root) == first
    (root / "pipeline" / "b.py").write_text("x = 2\n")  # an imported module, not the entry
    assert sources_digest("pipeline.a", root) != first
