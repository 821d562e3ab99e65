"""The systemd unit's sandbox and other users, emulated for tests.

ProtectSystem=strict is a private mount namespace in which `/` is mounted
read-only and only the unit's StateDirectory= and ReadWritePaths= are bind
mounted read-write. `sandboxed()` builds the same with unshare(1), so a
command sees exactly what the service would (EROFS outside its paths).
`as_user()` runs a command as another uid with setpriv(1), as the service's
dynamic user or an admin's login would be. Both need root, which CI has;
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOBODY = 65534


def need_root(why: str) -> None:
    """Skip outside CI when not root; in CI (always root) that is a failure."""
    if os.geteuid() == 0:
        return
    reason = f"needs root: {why}"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def kvm_digest(*args: str | Path) -> list[str]:
    """The command line of this checkout's kvm-digest."""
    return [sys.executable, "-m", "bot.cli", *map(str, args)]


_SANDBOX = (
    'mount -o remount,bind,ro / && for p in $WRITABLE; do mount --bind "$p" "$p" '
    '&& mount -o remount,bind,rw "$p" || exit 99; done && exec "$@"'
)


def sandboxed(
    argv: list[str], writable: list[Path], **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with `/` read-only and only `writable` read-write, as the unit would."""
    need_root("a private mount namespace, as ProtectSystem=strict makes")
    for path in writable:
        path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WRITABLE": " ".join(str(p) for p in writable)}
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SANDBOX, "sh", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        **kwargs,  # type: ignore[arg-type]
    )
    assert result.returncode != 99, f"could not build the sandbox: {result.stderr}"
    return result


def as_user(uid: int, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `uid` (no groups), the way the service or a login would."""
    need_root("running a command as another user")
    # The user's own HOME, as a login has (libgit2 reads ~/.gitconfig).
    env = {**os.environ, "HOME": "/nonexistent"}
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    probe = subprocess.run(
        [*setpriv, sys.executable, "-c", "import bot"], capture_output=True, cwd="/", env=env
    )
    if probe.returncode != 0:
        reason = f"uid {uid} cannot run this checkout's Python ({probe.stderr.decode().strip()})"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return subprocess.run(
        [*setpriv, *argv], capture_output=True, text=True, timeout=120, env=env, **kwargs
    )  # type: ignore[arg-type]
