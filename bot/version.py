"""Which kvm-digest this is: the version git gives the running code.

An admin must be able to tell what runs (`--version`), and the servers we
talk to should too: git fetches say it in their User-Agent, the bot's mail
in X-Mailer. The version is setuptools-scm's reading of git, e.g.
`0.2.dev14+g1a2b3c4d5` (14 commits after tag v0.1, at commit 1a2b3c4d5; a
`.dYYYYMMDD` suffix means uncommitted changes), found in this order:

1. a git checkout (the editable install of scripts/setup, or running from
   the tree): asked of git at run time, so it follows every commit and is
   never the stale one recorded when the checkout was installed;
2. an installed wheel: the version it was built with (package metadata);
3. bot/_version.py, written by the build (hatch-vcs), e.g. in an sdist;
4. otherwise `0.0`, as setuptools-scm names a tree without git metadata
   (a plain copy of the files), built or not.
   (`git archive` tarballs are not such copies: .git_archival.txt carries
   their commit, and setuptools-scm reads it.)

Looked up once per process and only when needed: setuptools-scm runs git.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

UNKNOWN = "0.0"
"""setuptools-scm's own fallback: what a tree without git metadata builds as."""
ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def version() -> str:
    return _from_checkout() or _installed() or _built() or UNKNOWN


def user_agent() -> str:
    """How kvm-digest names itself to web servers (git's http.userAgent)."""
    return f"kvm-digest/{version()}"


def mailer() -> str:
    """The X-Mailer of the bot's own mail."""
    return f"kvm-digest {version()}"


def _from_checkout() -> str | None:
    if not ((ROOT / ".git").exists() and (ROOT / "pyproject.toml").is_file()):
        return None
    try:
        from setuptools_scm import get_version
    except ImportError:  # a checkout without the dev tools: the install's version
        return None
    try:
        return get_version(root=str(ROOT), fallback_version=None)
    except (LookupError, OSError, subprocess.SubprocessError):
        return None  # git is missing or refuses the directory


def _installed() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("kvm-digest")
    except metadata.PackageNotFoundError:
        return None


def _built() -> str | None:
    try:
        from bot._version import __version__  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(__version__)
