"""The environment every git command of ours runs in.

`git -C PATH` picks PATH's repository only when no variable picks another:
a GIT_DIR left in the environment (a git hook that runs kvm-digest sets
one, as does a shell inside `git rebase -x`) would make a walk read that
repository instead of the archive, an import write into it, and a copy
from a source land where git fast-import does not look. So these are left
out of what git is given; everything else (a proxy, GIT_CONFIG_*) is kept.
"""

from __future__ import annotations

import os

LOCATION = (
    "GIT_DIR",
    "GIT_COMMON_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
)
"""The variables that choose a repository, or where its objects are."""


def git_env(**extra: str) -> dict[str, str]:
    """This process's environment without LOCATION's variables, and with `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LOCATION}
    env.update(extra)
    return env
