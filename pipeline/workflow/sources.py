"""The source files a stage runs: the transitive ``pipeline`` imports of its entry module.

The workflow lists them as the stage's inputs (``rules/common.smk``), so that editing a module
reruns exactly the stages that import it, directly or through other modules, and no list is
kept by hand. Imports are read from the syntax tree (:mod:`ast`), not by importing: every
``import``/``from ... import`` anywhere in a module counts, including ones inside functions
(lazy imports of heavy backends), so the result is a superset of what one run loads. The
one exception: an imported module's ``if __name__ == "__main__":`` block, which runs only when
that module is itself the command (``python -m pipeline.config``), never inside a stage.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "pipeline"
ROOT = Path(__file__).resolve().parents[2]


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The file of module ``name`` (``pkg.mod`` -> ``pkg/mod.py`` or ``pkg/mod/__init__.py``)
    under ``root``, or None when it is not a file there (a class or function name)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(name: str, path: Path) -> str:
    """The package a relative import in module ``name`` (file ``path``) starts from."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``"""
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def imported_names(name: str, root: Path = ROOT, as_main: bool = False) -> set[str]:
    """Modules of :data:`PACKAGE` that module ``name`` imports itself (one level).

    ``from pkg.mod import x`` yields ``pkg.mod`` and, when ``x`` is a submodule, ``pkg.mod.x``.
    Relative imports are resolved against the module's package. The module's main-guard block
    counts only when it runs as the command (``as_main``).
    """
    path = module_path(name, root)
    if path is None:
        raise ValueError(f"module {name!r} has no source file under {root}")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if not as_main:
        tree.body = [node for node in tree.body if not _is_main_guard(node)]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = _package_of(name, path).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                module = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] == PACKAGE and module_path(m, root) is not None}


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: importing a module runs every parent package's __init__."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def module_closure(entry: str, root: Path = ROOT) -> tuple[str, ...]:
    """Every module ``entry`` runs (itself, its ``pipeline`` imports, theirs, and the packages
    holding them), as sorted module names."""
    seen: set[str] = set()
    pending = _with_parents(entry)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imported_names(name, root, as_main=name == entry):
            pending.extend(m for m in _with_parents(imported) if m not in seen)
    return tuple(sorted(seen))


def stage_sources(entry: str, root: Path = ROOT) -> list[str]:
    """The files of :func:`module_closure`, relative to ``root`` (``pipeline/stages/train.py``, ...)."""
    return [module_path(name, root).relative_to(root).as_posix() for name in module_closure(entry, root)]


def sources_digest(entry: str, root: Path = ROOT) -> str:
    """A SHA-256 over the paths and bytes of :func:`stage_sources`: a stage keeps it in its
    checkpoint, so that a rerun after a code edit starts afresh instead of resuming from a
    checkpoint (even a finished one) that the old code wrote."""
    digest = hashlib.sha256()
    for path in stage_sources(entry, root):
        digest.update(path.encode() + b"\0" + (root / path).read_bytes() + b"\0")
    return digest.hexdigest()
