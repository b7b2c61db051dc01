"""``python -m pipeline.config``: check config files as the workflow does, list a study's
effective config, or print every key's default and meaning (``--reference``, docs/config.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config.audit import check_self_contained, effective_listing
from pipeline.config.files import merged, read_yaml
from pipeline.config.load import check_rewards, load
from pipeline.config.schema import SCHEMA_PATH, ConfigError, load_schema, with_schema_defaults


def _leaves(node: dict, path: tuple[str, ...] = ()):
    """``(key path, schema)`` of every key with a default, in the schema's order."""
    if "default" in node:
        yield ".".join(path), node
        return
    for key, child in node.get("properties", {}).items():
        yield from _leaves(child, (*path, key))
    item = node.get("additionalProperties")
    if isinstance(item, dict) and "properties" in item:
        yield from _leaves(item, (*path, "NAME"))


def reference_markdown() -> str:
    """Every config key with its default and meaning, from the schema (docs/config.md)."""
    lines = [
        "# Configuration keys",
        "",
        f"Generated from `rules/schemas/{SCHEMA_PATH.name}` by `python -m pipeline.config --reference`;",
        "edit the schema, not this file. A key a study config leaves out takes its default.",
        "`config.yaml` (the default study) states every key with the reason for its value.",
    ]
    section = None
    for key, node in _leaves(load_schema()):
        top = key.split(".")[0]
        if top != section:
            section = top
            lines += ["", f"## {top}", "", "| key | default | meaning |", "|---|---|---|"]
        default = json.dumps(node["default"])
        meaning = str(node.get("description", "")).replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, rewards: dict | None = None) -> int:
    """``python -m pipeline.config FILE ...``: check config files as the workflow does.

    Every file is parsed strictly (syntax errors and duplicate keys name file and line), merged
    onto ``--base`` (default ``config.yaml``) as Snakemake merges every ``--configfile``, and
    checked like the workflow's config (schema, cross-key checks, local paths, reward names and
    folders against ``rewards``, the registry, when given; a ``self_contained`` file may take
    no used key from the base). Snakemake's own loader reports a broken ``--configfile``
    without file or line, hence this command. ``--effective`` also prints every used key with
    its value, marking those the file takes from the base; ``--reference`` prints every key's
    default and meaning instead.
    """
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--base", type=Path, default=Path("config.yaml"), help="what an overlay extends")
    parser.add_argument("--no-paths", action="store_true", help="do not check that input paths exist")
    parser.add_argument("--reference", action="store_true", help="print every key's default and meaning")
    parser.add_argument(
        "--effective",
        action="store_true",
        help="print every key the study uses with its value, marking those taken from --base",
    )
    args = parser.parse_args(argv)
    if args.reference:
        print(reference_markdown(), end="")
        return 0
    if not args.files:
        parser.error("give config files to check, or --reference")
    sections = {name: getattr(reward, "config_sections", (name,)) for name, reward in (rewards or {}).items()}
    failed = 0
    for path in args.files:
        try:
            stated = raw = read_yaml(path)
            # Snakemake merges every --configfile onto config.yaml, whole or not.
            overlay = path.resolve() != args.base.resolve()
            if overlay:
                raw = merged(read_yaml(args.base), raw)
            effective = with_schema_defaults(raw)
            if args.effective:
                print(effective_listing(effective, stated if overlay else raw, path, args.base, sections))
            cfg = load(raw, str(path), check_paths=not args.no_paths)
            check_self_contained(effective, stated if overlay else raw, str(path), sections, str(args.base))
            if rewards is not None:
                check_rewards(cfg, rewards, str(path), check_paths=not args.no_paths)
        except (ConfigError, OSError) as error:
            print(f"{path}: {error}" if isinstance(error, OSError) else str(error))
            failed += 1
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    # Imported here, where this module is the command: the rewards registry is not a
    # dependency of the config package, which every stage imports.
    from pipeline.rewards import REWARDS

    raise SystemExit(main(rewards=REWARDS))
