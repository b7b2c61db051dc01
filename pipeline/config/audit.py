"""The config audit: which keys a study uses, and which of them it takes from ``config.yaml``
rather than its own files (``self_contained`` studies may take none; ``python -m
pipeline.config FILE --effective`` lists them). Run when the workflow is planned, never by a
stage."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config.schema import ConfigError


def _value_leaves(node, path: tuple[str, ...] = ()):
    """``(key path, value)`` of every leaf of a parsed config (mappings are descended)."""
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _value_leaves(child, (*path, str(key)))
    else:
        yield path, node


def unused_sections(effective: dict, reward_sections: dict | None = None) -> list[tuple[str, ...]]:
    """Key paths the study never reads, whatever their values: the mini model's sections for
    another backend, the generator or file source not chosen, the ``rewards`` sections no
    scored or trained reward reads (``reward_sections``: name -> the sections it reads, the
    registry's ``Reward.config_sections``; by default its own), methods outside
    ``run_methods``."""
    model, source = effective.get("model", {}), effective.get("dataset", {}).get("source", {})
    unused = []
    if model.get("backend", "mini") != "mini":
        unused += [("pretrain",), ("card",), ("model", "mini")]
    else:  # the mini model's sizes live in its folder; it needs no GPU
        unused += [("model", key) for key in ("path", "resolution", "dtype", "require_gpu")]
    if model.get("backend") != "flux":
        unused.append(("model", "distilled_guidance"))
    unused.append(
        ("dataset", "source", "files" if source.get("kind", "generated") == "generated" else "generator")
    )
    train = effective.get("train", {})
    used_rewards = set(effective.get("rewards", {}).get("score", []))
    for weights in ("reward_weights", "z_weights"):
        used_rewards |= {name for name, weight in (train.get(weights) or {}).items() if weight}
    sections = reward_sections or {}
    read = {section for name in used_rewards for section in sections.get(name, (name,))}
    unused += [
        ("rewards", name) for name in effective.get("rewards", {}) if name != "score" and name not in read
    ]
    selected = effective.get("run_methods")
    if selected is not None:
        unused += [("methods", name) for name in effective.get("methods", {}) if name not in selected]
    return unused


def inherited_keys(effective: dict, stated: dict, reward_sections: dict | None = None) -> list[str]:
    """Dotted keys whose value the study uses but ``stated`` (the study's own files) does not
    give: taken from the base config. Unused sections (:func:`unused_sections`) are left out."""
    unused = unused_sections(effective, reward_sections)
    stated_paths = {path for path, _ in _value_leaves(stated)}
    return [
        ".".join(path)
        for path, _ in _value_leaves(effective)
        if path not in stated_paths
        and path != ("self_contained",)
        and not any(path[: len(prefix)] == prefix for prefix in unused)
    ]


def check_self_contained(
    effective: dict, stated: dict, source: str, reward_sections: dict | None = None, base: str = "config.yaml"
) -> None:
    """For a study that declares ``self_contained``: no used key may come from ``base``."""
    if not effective.get("self_contained"):
        return
    inherited = inherited_keys(effective, stated, reward_sections)
    if inherited:
        values = dict(_value_leaves(effective))
        listed = ", ".join(f"{key} ({values[tuple(key.split('.'))]!r})" for key in inherited[:12])
        more = f" and {len(inherited) - 12} more" if len(inherited) > 12 else ""
        raise ConfigError(
            f"{source}: self_contained, yet {len(inherited)} keys it uses come from {base}: {listed}{more}; "
            "state each in the file (python -m pipeline.config FILE --effective lists them)"
        )


def effective_listing(effective: dict, stated: dict, path: Path, base: Path, sections: dict) -> str:
    """Every key the study uses, ``key: value``, those taken from ``base`` marked."""
    inherited = set(inherited_keys(effective, stated, sections))
    unused = unused_sections(effective, sections)
    lines = [f"# {path}: the effective config ({len(inherited)} used keys taken from {base}, marked <<)"]
    for key_path, value in _value_leaves(effective):
        if any(key_path[: len(prefix)] == prefix for prefix in unused):
            continue
        key = ".".join(key_path)
        lines.append(f"{key}: {json.dumps(value)}" + (f"  << {base}" if key in inherited else ""))
    return "\n".join(lines)
