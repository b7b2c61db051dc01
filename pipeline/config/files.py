"""Config files and their fingerprints: a strict YAML reader (file and line for a syntax error,
a duplicate key or an alias), Snakemake's merge of config files, and canonical JSON and its hash
(a stage's params, an MLflow run's config tag)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import yaml

from pipeline.config.schema import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice, and aliases: a config
    has no use for them, and a few hundred bytes of nested aliases expand to a billion nodes
    for any code that walks the result (the "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{event.start_mark.name}, line {event.start_mark.line + 1}: YAML alias *{event.anchor}: "
                "aliases are not allowed in a config; write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"{node.start_mark.name}, line {key_node.start_mark.line + 1}: duplicate key "
                    f"{key!r} (first at line {seen[key] + 1}); YAML would silently keep the last value"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML config file strictly: a syntax error or a duplicate key is a
    :class:`ConfigError` naming the file and line."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:
            return yaml.load(stream, Loader=_UniqueKeyLoader) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: YAML syntax error: {error.problem or error}") from None


def canonical_json(obj) -> str:
    """Stable JSON of a config slice (dataclass or plain data): sorted keys, no spaces."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(obj) -> str:
    """Short SHA-256 of :func:`canonical_json`, used to tag MLflow runs."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


def merged(base: dict, overlay: dict) -> dict:
    """``overlay`` merged onto ``base`` key by key, nested mappings recursively (Snakemake's rule)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out
