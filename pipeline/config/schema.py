"""The config schema (``rules/schemas/config.schema.yaml``): the one statement of what a config
may hold, what each key means and its default.

:func:`validate` checks a parsed config against it; errors name the key path and the bad
value, e.g. ``config key 'dataset.source.generator.n_train': -5 is less than the minimum of
1``. :func:`defaults_from_schema` gives the dataclasses of :mod:`pipeline.config.types` their
defaults from it.
"""

from __future__ import annotations

from dataclasses import field
from functools import cache
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "rules" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not match the schema or names a missing file."""


@cache
def load_schema() -> dict:
    """The config schema (parsed once per process)."""
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def schema_node(path: str) -> dict:
    """The schema of the config section or key at ``path`` (``train``, ``methods.*``, ``""``)."""
    node = load_schema()
    for key in filter(None, path.split(".")):
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return node


def _immutable(value):
    """A schema default as a frozen dataclass default: lists as tuples, dicts by a factory."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return field(default_factory=lambda: dict(value))
    return value


def defaults_from_schema(path: str):
    """Class decorator (under ``@dataclass``): every annotated field without a value of its own
    takes its default from the schema at ``path``, so that the schema is the one home of the
    defaults. Nested sections set their own ``field(default_factory=...)``; a field that is not
    a config key (``TrainConfig.seed``) sets its own value and says why."""

    def decorate(cls):
        properties = schema_node(path).get("properties", {})
        for name in cls.__annotations__:
            if name in cls.__dict__:
                continue
            if "default" not in properties.get(name, {}):
                raise TypeError(f"{cls.__name__}.{name}: {SCHEMA_PATH.name} has no default for {path}.{name}")
            setattr(cls, name, _immutable(properties[name]["default"]))
        return cls

    return decorate


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if error.absolute_path else ""
        keys = ", ".join(repr(prefix + k) for k in extra)
        return f"config key {keys}: unknown key (valid keys here: {', '.join(allowed)})"
    if error.validator == "required":
        return f"config key {where!r}: {error.message}"
    return f"config key {where!r}: {error.instance!r} is invalid: {error.message}"


def validate(raw: dict, source: str = "config") -> None:
    """Check ``raw`` against the schema; raise :class:`ConfigError` listing every problem."""
    validator = jsonschema.Draft7Validator(load_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}:\n{lines}")
    gen = raw.get("dataset", {}).get("source", {}).get("generator", {})
    if gen.get("word_min_len", 0) > gen.get("word_max_len", 10**9):
        raise ConfigError(
            f"{source}: config key 'dataset.source.generator.word_min_len' "
            f"({gen['word_min_len']}) is greater than word_max_len ({gen['word_max_len']})"
        )
    mini = raw.get("model", {}).get("mini", {})
    map_default = schema_node("model.mini")["properties"]["position_map_channels"]["default"]
    if mini.get("position_map_channels", map_default) == 0:
        for key in ("cell_coordinates", "template_channels"):
            if mini.get(key):
                raise ConfigError(
                    f"{source}: config key 'model.mini.{key}' ({mini[key]}) needs the character "
                    "position map, but model.mini.position_map_channels is 0"
                )


def coerce_strings(raw, schema: dict | None = None):
    """``raw`` with every string that stands where the schema wants a number, boolean or null
    replaced by its YAML value, when that value has a wanted type.

    Snakemake hands nested ``--config`` values over as strings (``--config
    'report={grid_prompts: 6}'`` gives ``"6"``); the workflow coerces them so that such an
    override means what it says. Other strings are left for the schema check to report.
    """
    schema = load_schema() if schema is None else schema
    if isinstance(raw, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {
            key: coerce_strings(value, properties.get(key, extra if isinstance(extra, dict) else {}))
            for key, value in raw.items()
        }
    if isinstance(raw, list):
        items = schema.get("items", {})
        return [coerce_strings(value, items if isinstance(items, dict) else {}) for value in raw]
    wanted = schema.get("type", [])
    wanted = [wanted] if isinstance(wanted, str) else wanted
    if isinstance(raw, str) and "null" in wanted and raw in ("null", "~"):
        return None
    if not isinstance(raw, str) or "string" in wanted or not wanted:
        return raw
    value = yaml.safe_load(raw)
    if isinstance(value, str) and "number" in wanted:  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(raw)
        except ValueError:
            pass
    kinds = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
    ok = any(isinstance(value, kinds.get(kind, ())) for kind in wanted)
    if isinstance(value, bool) and "boolean" not in wanted:  # bool is an int subclass
        ok = False
    return value if ok else raw


def with_schema_defaults(raw: dict, node: dict | None = None) -> dict:
    """``raw`` with every absent key that has a schema default filled in with it (nested
    sections recursively, and each entry of a named-entries section such as ``methods``): the
    config the stages see, since every dataclass takes the schema's defaults."""
    node = load_schema() if node is None else node
    out = dict(raw)
    for key, child in node.get("properties", {}).items():
        if key in out:
            if isinstance(out[key], dict) and ("properties" in child or "additionalProperties" in child):
                out[key] = with_schema_defaults(out[key], child)
        elif "default" in child:
            out[key] = child["default"]
        elif "properties" in child:
            filled = with_schema_defaults({}, child)
            if filled:
                out[key] = filled
    entries = node.get("additionalProperties")
    if isinstance(entries, dict) and "properties" in entries:
        for key in set(out) - set(node.get("properties", {})):
            if isinstance(out[key], dict):
                out[key] = with_schema_defaults(out[key], entries)
    return out
