"""Writes ``benchmarks/README.md``: a headline table of the figures that matter, a plot
per benchmark where a picture says more, then every result with the revision that
measured it.

    python -m benchmarks.report [--results-dir benchmarks/results] [--out benchmarks/README.md]
    python -m benchmarks.report --stale [NAME ...]   # which must be measured again

A figure may be cited only at the revision that measured it, so each result is marked:

- ``current``: measured on a clean tree, and no file the benchmark depends on differs
  from that revision (the files are derived from its imports: ``benchmarks.deps``);
- ``stale``: such a file changed after the measured revision (committed or not); a
  Python file whose syntax tree is unchanged (a formatter's or a comment's change) has
  not changed anything that runs and does not count;
- ``dirty``: measured with uncommitted changes to tracked files;
- ``smoke``: a reduced run that checks the script works, never a figure;
- ``unknown revision``: the revision is missing or not in this repository;
- ``missing``: a benchmark with no result at all.

``--stale`` prints the names (of those given, default every benchmark) whose result is
anything but current, for ``make bench`` to run; why each is, goes to stderr.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import REPO, results_dir
from benchmarks.deps import dependencies

META = ("smoke", "machine", "git_revision", "measured_at")
INLINE_CHARS = 80  # longer values are left to the JSON file
SHOWN_CHANGES = 3  # changed files named in a stale mark; the rest are counted


@dataclass(frozen=True)
class Status:
    label: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.label} ({self.detail})" if self.detail else self.label


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
    )


def benchmark_names(repo: Path) -> list[str]:
    """Every script in benchmarks/ that calls ``write_result`` (a benchmark, not a helper)."""
    return sorted(p.stem for p in (repo / "benchmarks").glob("*.py") if _writes_result(p))


def _writes_result(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_result":
            return True
    return False


def script(name: str) -> str:
    return f"benchmarks/{name}.py"


def code_paths(repo: Path, name: str) -> list[str]:
    """What the figures of ``name`` depend on (empty when its script is gone)."""
    if not (repo / script(name)).is_file():
        return []
    return dependencies(repo, script(name))


def changed_since(repo: Path, revision: str, paths: list[str]) -> list[str] | None:
    """Which of ``paths`` differ now (working tree, untracked files too) from
    ``revision``; None when git cannot tell."""
    if not paths:
        return (
            [] if _git(repo, "cat-file", "-e", f"{revision}^{{commit}}").returncode == 0 else None
        )
    diff = _git(repo, "diff", "--name-only", revision, "--", *paths)
    new = _git(repo, "ls-files", "--others", "--exclude-standard", "--", *paths)
    if diff.returncode or new.returncode:
        return None
    changed = [p for p in diff.stdout.split() if not _same_code(repo, revision, p)]
    return sorted(set(changed) | set(new.stdout.split()))


def _same_code(repo: Path, revision: str, path: str) -> bool:
    """A Python file whose syntax tree is the one it had at ``revision``: only its
    layout or comments changed (a formatter's work), so nothing that runs did.
    Docstrings are in the tree and count; any other file counts by its text."""
    if not path.endswith(".py") or not (repo / path).is_file():
        return False
    old = _git(repo, "show", f"{revision}:{path}")
    if old.returncode:
        return False
    try:
        before = ast.dump(ast.parse(old.stdout))
        return before == ast.dump(ast.parse((repo / path).read_text()))
    except (SyntaxError, ValueError, OSError):
        return False


def status(repo: Path, name: str, result: dict | None) -> Status:
    """The result's mark; a result whose sections were measured on their own (each with
    its own ``git_revision``) is only as current as its least current part."""
    if result is None:
        return Status("missing", "no result: run `make bench`")
    sections = [
        (key, value)
        for key, value in result.items()
        if isinstance(value, dict) and "git_revision" in value
    ]
    marks = [_status_at(repo, name, result)]
    marks += [_status_at(repo, name, value, key) for key, value in sections]
    return min(marks, key=lambda m: RANK.index(m.label))


RANK = ("missing", "unreadable", "stale", "unknown revision", "smoke", "dirty", "current")


def _status_at(repo: Path, name: str, result: dict, section: str = "") -> Status:
    status = _revision_status(repo, name, result)
    if section and status.label != "current":
        return Status(status.label, f"section {section}: {status.detail}".rstrip(": "))
    return status


def _revision_status(repo: Path, name: str, result: dict) -> Status:
    revision = str(result.get("git_revision") or "unknown")
    if result.get("smoke"):
        return Status("smoke", "not a figure")
    base, dirty = revision.removesuffix("+dirty"), revision.endswith("+dirty")
    if base == "unknown" or _git(repo, "cat-file", "-e", f"{base}^{{commit}}").returncode:
        return Status("unknown revision")
    if not (repo / script(name)).is_file():
        return Status("stale", f"`{script(name)}` is gone")
    changed = changed_since(repo, base, code_paths(repo, name))
    if changed is None:
        return Status("unknown revision")
    if changed:
        named = ", ".join(f"`{p}`" for p in changed[:SHOWN_CHANGES])
        more = f" and {len(changed) - SHOWN_CHANGES} more" if len(changed) > SHOWN_CHANGES else ""
        return Status("stale", f"changed since: {named}{more}")
    if dirty:
        return Status("dirty", "uncommitted changes when measured")
    return Status("current")


def load_results(results: Path) -> dict[str, dict | str]:
    """name -> the result, or the reason it cannot be read."""
    out: dict[str, dict | str] = {}
    for path in sorted(results.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except ValueError as e:
            out[path.stem] = f"unreadable: {e}"
    return out


def statuses(repo: Path, results: Path, names: list[str] | None = None) -> dict[str, Status]:
    """The status of each benchmark (with a script or a result), by name."""
    loaded = load_results(results)
    names = names or sorted(set(benchmark_names(repo)) | set(loaded))
    out = {}
    for name in names:
        r = loaded.get(name)
        out[name] = status(repo, name, r) if not isinstance(r, str) else Status("unreadable", r)
    return out


def fmt(value: object, name: str, key: str) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if len(text) > INLINE_CHARS:
        size = f"{len(value)} entries" if isinstance(value, (dict, list)) else "long"
        return f"({size}: `results/{name}.json` `{key}`)"
    return text.replace("|", "\\|")


def short_revision(result: dict) -> str:
    revision = str(result.get("git_revision") or "unknown")
    return revision[:10] + ("+dirty" if revision.endswith("+dirty") else "")


def dump(repo: Path, loaded: dict[str, dict | str], marks: dict[str, Status]) -> list[str]:
    """Every benchmark's status and what it depends on, then every key of every result."""
    summary = [
        "| benchmark | revision | status | measured at | machine | files it depends on |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    table = [
        "| benchmark | figure | value | revision | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, st in marks.items():
        result = loaded.get(name)
        deps = code_paths(repo, name)
        where = f"{len(deps)} files (`python -m benchmarks.deps {name}`)" if deps else ""
        if not isinstance(result, dict):
            summary.append(f"| {name} | | {st} | | | {where} |")
            continue
        short = short_revision(result)
        m = result.get("machine") or {}
        machine = m.get("gpu") or f"{m.get('cpus', '?')} CPUs"
        if "load_avg_1m" in m:
            machine += f", load {m['load_avg_1m']}"
        summary.append(
            f"| {name} | `{short}` | {st} | {str(result.get('measured_at', '?'))[:19]} "
            f"| {machine} | {where} |"
        )
        for key, value in result.items():
            if key not in META:
                table.append(
                    f"| {name} | `{key}` | {fmt(value, name, key)} | `{short}` | {st.label} |"
                )
    return [*summary, "", *table]


HEADER = [
    "# Benchmark results",
    "",
    "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`"
    " (do not edit by hand). `make bench` measures again every CPU benchmark whose"
    " result is not current, then writes this. What each benchmark compares and how is"
    " the docstring at the top of `benchmarks/<name>.py`.",
    "",
    "A figure is cited only at the revision that measured it. Status: **current** ="
    " measured on a clean tree, and no file the benchmark depends on (derived from its"
    " imports, `benchmarks/deps.py`) has changed since; **stale** = such a file changed"
    " since (the first few are named); **dirty** = measured with uncommitted changes;"
    " **smoke** = a reduced run that only checks the script works, not a figure;"
    " **unknown revision** = not in this repository's history; **missing** = never"
    " measured.",
    "",
]


def render(results: Path, repo: Path, out_dir: Path | None = None) -> str:
    """The README; plots go to ``out_dir/plots`` when ``out_dir`` is given."""
    from benchmarks.report_headline import headline, plots

    loaded = load_results(results)
    if not loaded:
        return "\n".join([*HEADER, "No results yet: run `make bench`.", ""])
    marks = statuses(repo, results)
    lines = [*HEADER, *headline(loaded, marks), ""]
    if out_dir is not None:
        lines += [*plots(loaded, marks, out_dir / "plots"), ""]
    lines += ["## Every figure", "", *dump(repo, loaded, marks), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "README.md"))
    ap.add_argument("--repo", default=str(REPO), help="the git repository the revisions are in")
    ap.add_argument(
        "--stale",
        nargs="*",
        metavar="NAME",
        help="print which of these benchmarks (default all) are not current, and exit",
    )
    args = ap.parse_args(argv)
    repo, results = Path(args.repo), results_dir(args.results_dir)
    if args.stale is not None:
        known = set(benchmark_names(repo))
        unknown = [n for n in args.stale if n not in known]
        if unknown:
            print(f"--stale: no benchmark named {', '.join(unknown)}", file=sys.stderr)
            return 2
        marks = statuses(repo, results, args.stale or sorted(known))
        todo = [n for n, st in marks.items() if st.label != "current"]
        for n, st in marks.items():
            print(f"{n}: {st}", file=sys.stderr)
        print(" ".join(todo))
        return 0
    out = Path(args.out)
    out.write_text(render(results, repo, out.parent))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
