"""What a benchmark's figures depend on, read from the code: the repository files its
script imports, transitively, and the files they load by path.

A hand-kept list of what each benchmark measures goes out of date the day someone adds
an import, and then a result is cited as current while code it ran has changed. So the
list is derived, statically (``ast``; nothing is imported, torch never loads):

- ``import a.b`` / ``from a.b import c`` (at any depth in a function too, relative ones
  included) of a module that lives in this repository: its file, and the ``__init__.py``
  of every package on the way, since Python runs those too;
- a string naming a repository module with a dot in it (``"visionline.training"``):
  such strings are run with ``python -m`` or ``import_module``, so the module counts as
  imported, and a package's ``__main__.py`` with it;
- ``files("pkg")`` (``importlib.resources``): every file of that package, since what is
  read from it (the handler a model archive carries) runs elsewhere;
- a path spelled out of string parts (``REPO / "configs" / "digits.yaml"``) that names a
  file in the repository, relative to the root or to the module's own folder.

Modules outside the repository (torch, TorchServe, the standard library) are not
followed: their versions are in each result's ``machine``.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

# Where the benchmarks' imports resolve in the repository: the root (benchmarks, flows,
# tests.support) and src/ (visionline); setup.py installs handlers/ as visionline_handlers.
ROOTS = ("", "src")
ALIASES = {"visionline_handlers": "handlers"}
_MODULE_STRING = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def module_path(repo: Path, name: str) -> Path | None:
    """The file of repository module ``name`` (a package's ``__init__.py``), else None."""
    parts = name.split(".")
    parts[0] = ALIASES.get(parts[0], parts[0])
    for root in ROOTS:
        base = repo.joinpath(root, *parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        if base.is_dir() and any(base.glob("*.py")):  # a namespace package
            return base
    return None


def _with_parents(repo: Path, name: str) -> list[Path]:
    """``name``'s file and the ``__init__.py`` of each package above it (Python runs them)."""
    out = []
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        p = module_path(repo, ".".join(parts[:i]))
        if p is not None:
            out.append(p)
    return out


def _package_of(repo: Path, path: Path) -> str:
    rel = path.relative_to(repo)
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "src":
        parts = parts[1:]
    for alias, folder in ALIASES.items():
        if parts[0] == folder:
            parts[0] = alias
    if parts[-1] == "__init__":
        return ".".join(parts[:-1])
    return ".".join(parts[:-1])


def _path_parts(node: ast.BinOp) -> list[str]:
    """The string constants at the end of ``a / "x" / "y"``."""
    parts: list[str] = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        if isinstance(node.right, ast.Constant) and isinstance(node.right.value, str):
            parts.insert(0, node.right.value)
            node = node.left
        else:
            break
    return parts


def _references(repo: Path, path: Path) -> tuple[set[str], set[Path]]:
    """(module names imported or named, files loaded by path or as package data)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(repo, path)
    names: set[str] = set()
    files: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, node.module] if node.module else up)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # submodules
        elif isinstance(node, ast.Call) and _called(node) == "files" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                folder = module_path(repo, arg.value)
                if folder is not None:
                    folder = folder.parent if folder.is_file() else folder
                    files.update(p for p in folder.rglob("*") if _source_file(p))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MODULE_STRING.match(node.value):
                names.add(node.value)
                names.add(node.value + ".__main__")  # python -m runs a package's __main__
        elif isinstance(node, ast.BinOp):
            parts = _path_parts(node)
            if parts:
                for base in (repo, path.parent):
                    f = base.joinpath(*parts)
                    if f.is_file():
                        files.add(f)
    return names, files


def _called(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _source_file(p: Path) -> bool:
    return p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"


@lru_cache(maxsize=4096)
def _refs_cached(repo: Path, path: Path, mtime: float) -> tuple[frozenset, frozenset]:
    names, files = _references(repo, path)
    return frozenset(names), frozenset(files)


def dependencies(repo: Path, script: str | Path) -> list[str]:
    """Every repository file ``script`` (repo-relative) depends on, itself included, as
    sorted repo-relative paths."""
    repo = repo.resolve()
    start = (repo / script).resolve()
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.suffix != ".py":
            continue
        if path.is_dir():  # a namespace package: nothing runs
            continue
        names, files = _refs_cached(repo, path, path.stat().st_mtime)
        for name in names:
            todo.extend(p for p in _with_parents(repo, name) if p not in seen)
        todo.extend(f for f in files if f not in seen)
    return sorted(str(p.relative_to(repo)) for p in seen if p.is_file())


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.deps",
        description="The repository files a benchmark depends on, one a line.",
    )
    ap.add_argument("name", help="a benchmark: benchmarks/NAME.py")
    args = ap.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "benchmarks" / f"{args.name}.py").is_file():
        print(f"no benchmark benchmarks/{args.name}.py", file=sys.stderr)
        return 2
    print("\n".join(dependencies(repo, f"benchmarks/{args.name}.py")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
