"""Why a path cannot be written, said so that an admin can act on it.

"Cannot write" has four usual causes, and each has its own fix: a full disk
(free space), a read-only file system (under the systemd unit, almost always
ProtectSystem=strict: the path is outside StateDirectory= and needs
ReadWritePaths=), another owner (run as the owner, or chown), and git's
refusal to open a repository someone else owns (run as the owner, or
safe.directory). Each is told from the errno, the SQLite error code or the
text git printed, so that the message names the cause, not a guess.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from pathlib import Path

READ_ONLY_FIX = (
    "if this is the systemd service, ProtectSystem=strict makes everything but its "
    "StateDirectory= (/var/lib/kvm-digest) read-only: add ReadWritePaths={path} to the "
    "unit (`systemctl edit kvm-digest`) or keep the path under the state directory"
)

# git: "dubious ownership in repository at '/x'"; libgit2: "repository path '/x/' is not owned"
_REFUSED_PATH = re.compile(r"(?:repository at|repository path) '([^']+?)/?'")
_GIT_TEXTS = (
    ("Read-only file system", errno.EROFS),
    ("No space left on device", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("File too large", errno.EFBIG),
    ("Permission denied", errno.EACCES),
)


def advice(code: int | None, path: Path | str | None) -> str:
    """What failed writes with `code` (an errno) under `path` mean, and the fix."""
    where = str(path) if path else "the data directory"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {where} is full: free some disk space"
    if code == errno.EFBIG:
        return (
            f"a file under {where} reached the file size limit (ulimit -f, LimitFSIZE=) "
            "or the disk is full: free some disk space or raise the limit"
        )
    if code == errno.EROFS:
        return f"{where} is on a read-only file system; " + READ_ONLY_FIX.format(path=where)
    if code in (errno.EACCES, errno.EPERM):
        owner = _owner(path)
        return (
            f"this user (uid {os.geteuid()}) may not write {where}{owner}: run kvm-digest "
            "as the user that owns it, or fix its owner or permissions"
        )
    return f"cannot write {where}: free some disk space or fix its permissions"


def explain(err: OSError | sqlite3.Error, roots: list[Path]) -> str:
    """One sentence for an OSError or SQLite error that reached the command line.

    `roots` are the directories the configuration writes (the data directory,
    the archive): the fix names the one holding the failed file, since that
    is what a unit's ReadWritePaths= or a chown must cover.
    """
    data_dir = roots[0] if roots else None
    if isinstance(err, OSError):
        failed = Path(err.filename) if err.filename else data_dir
        said = err.strerror or str(err)
        return f"cannot write {failed} ({said}); {advice(err.errno, _root(failed, roots))}"
    code = getattr(err, "sqlite_errorname", "")
    if code == "SQLITE_FULL":
        return f"{err}; {advice(errno.ENOSPC, data_dir)}"
    if data_dir is not None:
        why = problem(data_dir)
        if why:
            return f"{err}: {why}"
        index = data_dir / "index.sqlite3"
        if code in ("SQLITE_READONLY", "SQLITE_CANTOPEN") and index.exists():
            why = problem(index)
            if why:
                return f"{err}: {why}"
    return f"{err}; free some disk space or fix the data directory's permissions"


def _root(path: Path | None, roots: list[Path]) -> Path | None:
    """The configured directory that holds `path` (else its directory)."""
    if path is None:
        return None
    for root in roots:
        if path.absolute().is_relative_to(root.absolute()):
            return root
    return path if path.is_dir() else path.parent


def from_git(text: str, path: Path) -> str:
    """The fix for a failed git write, from what git printed."""
    return advice(git_errno(text), path)


def git_errno(text: str) -> int | None:
    """The errno behind what git printed, when it names one we can advise on."""
    return next((code for said, code in _GIT_TEXTS if said in text), None)


def problem(path: Path) -> str | None:
    """Why this user cannot create or write `path`, or None; nothing is created.

    A path that does not exist yet is judged by its nearest existing parent,
    where it would be created. The file system's read-only flag is read with
    statvfs: access(2) says only "no", and the fix differs.
    """
    path = path.absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() and probe != path:
        return f"{probe} is not a directory"
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        return advice(errno.EROFS, path)
    if not os.access(probe, os.W_OK | (os.X_OK if probe.is_dir() else 0)):
        return advice(errno.EACCES, probe)
    return None


def ownership(path: Path, text: str) -> str | None:
    """The fix when git (or libgit2) refused a repository owned by another user.

    git does this since 2.35.2 (CVE-2022-24765), for root too: `kvm-digest`
    run as root on the service's files is refused.
    """
    if "not owned by current user" not in text and "dubious ownership" not in text:
        return None
    named = _REFUSED_PATH.search(text)  # the repository itself, for safe.directory
    path = Path(named.group(1)) if named else path.absolute()
    return (
        f"git refuses to open {path}: it belongs to{_owner(path, bare=True)}, not to this "
        f"user (uid {os.geteuid()}). Run kvm-digest as its owner (the service's files: "
        'see "Running as a service" in the README), or, if this user should own it, '
        f"`chown -R {os.geteuid()} {path}`; to let this user read it as it is, "
        f"`git config --global --add safe.directory {path}`"
    )


def _owner(path: Path | str | None, bare: bool = False) -> str:
    if not path:
        return ""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        uid = probe.stat().st_uid
    except OSError:
        return ""
    return f" uid {uid}" if bare else f" (owned by uid {uid})"
