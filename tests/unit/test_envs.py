"""envs/*.yaml (for --sdm conda) pin the same packages and versions as pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)$")


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = PIN.match(requirement.strip())
        assert match, f"not an exact pin: {requirement!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_env_files_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = _pins(project["dependencies"])
    env_files = sorted((REPO / "envs").glob("*.yaml"))
    assert env_files, "no conda env files in envs/"
    for path in env_files:
        env = yaml.safe_load(path.read_text())
        pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
        assert pip_lists, f"{path.name}: no pip section"
        pinned = _pins([r for r in pip_lists[0] if not r.startswith("-")])
        for name, version in pinned.items():
            assert expected.get(name) == version, (
                f"{path.name}: {name}=={version}, pyproject has {expected.get(name)}"
            )
        assert pinned == expected, f"{path.name} lists other packages than pyproject.toml"
