"""Follow a public-inbox v2 inbox over git (lore), without a mailbox.

`[archive] follow = "https://lore.kernel.org/kvm"` keeps a mirror of the
inbox's epochs under the data dir (or `[archive] path`): `git/0.git`,
`git/1.git`, ... each a `git clone --mirror` of `<url>/N`, which is how
public-inbox serves them over the web (`<url>/git/N.git` for an inbox on
disk). A fetch updates every epoch we have, then looks for the next one by
trying to clone it: public-inbox starts a new epoch as an inbox grows, and a
missing one is simply not there yet. That probe works the same for lore over
https and for a local or file:// inbox, with no manifest to parse. The index
reads the result as one archive (bot/store/inbox.py), so digests carry the
inbox's own commit ids.

git runs as a subprocess (no shell), never prompting for credentials. A URL
with credentials (`https://user:token@host/...`, a private mirror) is split:
git gets the bare URL in its argv, which any user can read in /proc, and
the credentials as an `http.<url>.extraHeader` through its environment
(GIT_CONFIG_COUNT/KEY/VALUE), so they are neither in argv nor stored in the
mirror's config; every URL and git message shown is redacted (bot/redact.py).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from bot import redact
from bot.config import ArchiveSection
from bot.errors import DigestError
from bot.store.inbox import epoch_paths

log = logging.getLogger(__name__)

_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}


def split_credentials(url: str) -> tuple[str, str]:
    """(the URL without its userinfo, "user:password" or "") for an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, ""
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), f"{unquote(user)}:{unquote(password)}"


def git_env(url: str) -> dict[str, str]:
    """The environment git runs in for `url`: its credentials, if any, as a header.

    Scoped to the URL's host (`http.https://host/.extraHeader`), added after
    any GIT_CONFIG_COUNT entries the environment already has.
    """
    bare, credentials = split_credentials(url)
    if not credentials:
        return _ENV
    parts = urlsplit(bare)
    count = int(_ENV.get("GIT_CONFIG_COUNT", "0") or 0)
    token = base64.b64encode(credentials.encode()).decode()
    return {
        **_ENV,
        "GIT_CONFIG_COUNT": str(count + 1),
        f"GIT_CONFIG_KEY_{count}": f"http.{parts.scheme}://{parts.netloc}/.extraHeader",
        f"GIT_CONFIG_VALUE_{count}": f"Authorization: Basic {token}",
    }


POLL_SECONDS = 0.25
"""How often a running git's download is measured against the byte bound."""


@dataclass(frozen=True)
class Bounds:
    """How much one fetch may bring: `[archive] max_epochs` and `max_fetch_bytes`."""

    max_epochs: int
    max_bytes: int

    @classmethod
    def of(cls, section: ArchiveSection) -> Bounds:
        return cls(section.max_epochs, section.max_fetch_bytes)


@dataclass
class Fetched:
    """What one fetch did, for the one-line summary, and what went wrong."""

    updated: list[int] = field(default_factory=list)
    cloned: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """One sentence each: an epoch that could not be fetched, a bound reached."""

    def __str__(self) -> str:
        said = []
        if self.cloned:
            said.append("new epochs " + ", ".join(map(str, self.cloned)))
        if self.updated:
            said.append("fetched epochs " + ", ".join(map(str, self.updated)))
        return "; ".join(said) or "nothing to fetch"


class Budget:
    """The bytes this fetch may still bring (all epochs together)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.spent = 0

    @property
    def left(self) -> int:
        return self.total - self.spent


class OverBudget(Exception):
    """A git transfer was stopped at `[archive] max_fetch_bytes`."""


def epoch_url(url: str, number: int) -> str:
    """Where public-inbox serves epoch `number` of the inbox at `url`.

    Over the web it is `<url>/N` (public-inbox-overview(7): "git clone
    --mirror URL/EPOCH"); an inbox on disk (a path or file:// URL) keeps it
    at `git/N.git`, the v2 layout.
    """
    base = url.rstrip("/")
    if base.startswith(("http://", "https://")):
        return f"{base}/{number}"
    return f"{base}/git/{number}.git"


def fetch(url: str, inbox: Path, bounds: Bounds) -> Fetched:
    """Bring the local mirror of the inbox at `url` up to date; say what changed.

    Each epoch is fetched on its own: one that fails (a server that dropped
    an old epoch, a broken repository) is a problem of that epoch, and the
    others are still fetched, new ones too. At most `bounds.max_epochs`
    epochs are followed and at most `bounds.max_bytes` brought, so a server
    that answers every epoch number, or sends without end, is stopped with
    one sentence, keeping what was complete.
    """
    done = Fetched()
    budget = Budget(bounds.max_bytes)
    bare, _ = split_credentials(url)
    env = git_env(url)
    shown = redact.text(url)
    have = epoch_paths(inbox)
    for epoch in have:
        number = int(epoch.name.removesuffix(".git"))
        try:
            _forget_credentials(epoch, epoch_url(bare, number))
            _update(epoch, budget, env)
        except OverBudget:
            done.problems.append(_over_budget(shown, bounds))
            return done
        except DigestError as err:
            done.problems.append(str(err))
            continue
        done.updated.append(number)
    number = max((int(e.name.removesuffix(".git")) for e in have), default=-1) + 1
    while True:
        if number >= bounds.max_epochs:
            if _exists(epoch_url(bare, number), env):
                done.problems.append(
                    f"{shown} offers more than [archive] max_epochs = {bounds.max_epochs} "
                    f"epochs; stopped at epoch {number - 1}. A real inbox gains an epoch per "
                    "gigabyte or so: raise max_epochs if this one is that large"
                )
            return done
        try:
            dest = inbox / "git" / f"{number}.git"
            if not _clone(epoch_url(bare, number), dest, number, budget, env):
                return done
        except OverBudget:
            done.problems.append(_over_budget(shown, bounds))
            return done
        done.cloned.append(number)
        number += 1


def _over_budget(url: str, bounds: Bounds) -> str:
    return (
        f"stopped fetching from {url}: one fetch may bring at most [archive] "
        f"max_fetch_bytes = {bounds.max_bytes} bytes; the complete epochs are kept and "
        "the next fetch goes on (raise max_fetch_bytes if one epoch is larger)"
    )


def _update(epoch: Path, budget: Budget, env: dict[str, str]) -> None:
    args = ["-C", str(epoch), "fetch", "--quiet", "--prune", "origin"]
    result = _bounded(args, epoch, budget, env)
    if result.returncode != 0:
        raise DigestError(
            f"git cannot fetch {epoch}: {_last_line(result.stderr)}; the other epochs are "
            "fetched as usual. Check the network and [archive] follow (a server that no "
            "longer serves an old epoch leaves our copy of it as it was)"
        )


def _exists(url: str, env: dict[str, str]) -> bool:
    """True when a repository answers at `url` (its refs only: no objects are fetched)."""
    result = subprocess.run(
        ["git", "ls-remote", url], capture_output=True, text=True, env=env, check=False
    )
    return result.returncode == 0 and bool(result.stdout.strip())


def _forget_credentials(epoch: Path, bare: str) -> None:
    """An epoch cloned with credentials in its URL (an older version did) loses them."""
    result = subprocess.run(
        ["git", "-C", str(epoch), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        env=_ENV,
        check=False,
    )
    if split_credentials(result.stdout.strip())[1]:
        _git("-C", str(epoch), "config", "remote.origin.url", bare, what=f"update {epoch}")


def _clone(url: str, dest: Path, number: int, budget: Budget, env: dict[str, str]) -> bool:
    """Clone one epoch; False when the inbox has no such epoch (yet).

    The clone goes to a temporary name and is renamed when complete, so an
    interrupted clone is never mistaken for an epoch.
    """
    if number > 0 and not _exists(url, env):
        log.debug("no epoch at %s yet", url)
        return False
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = _bounded(["clone", "--quiet", "--mirror", url, str(partial)], partial, budget, env)
    except OverBudget:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        if number == 0:
            raise DigestError(
                f"cannot clone {url}: {_last_line(result.stderr)}; check [archive] follow "
                "(the inbox URL, e.g. https://lore.kernel.org/kvm) and the network"
            )
        raise DigestError(
            f"cannot clone the new epoch {url}: {_last_line(result.stderr)}; the next "
            "fetch tries again"
        )
    partial.rename(dest)
    log.info("cloned new epoch %s", url)
    return True


def _bounded(
    args: list[str], where: Path, budget: Budget, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run git, stopping it when `where` grows by more than the budget has left."""
    before = _size(where)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(["git", *args], stdout=subprocess.DEVNULL, stderr=errors, env=env)
        while True:
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if _size(where) - before > budget.left:
                    proc.kill()
                    proc.wait()
                    _drop_temporary_packs(where)
                    raise OverBudget from None
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    budget.spent += max(0, _size(where) - before)
    if budget.left < 0:
        raise OverBudget
    return subprocess.CompletedProcess(args, proc.returncode, "", stderr)


def _size(path: Path) -> int:
    """Bytes in the files under `path` (0 when it does not exist yet)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _drop_temporary_packs(repo: Path) -> None:
    """Remove what a git fetch stopped midway leaves: its unfinished packs."""
    pack = repo / "objects" / "pack"
    if pack.is_dir():
        for leftover in pack.glob("tmp_*"):
            leftover.unlink(missing_ok=True)


def _git(*args: str, what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        ["git", *args], capture_output=True, text=True, env=env or _ENV, check=False
    )
    if result.returncode != 0:
        raise DigestError(
            f"git cannot {what}: {_last_line(result.stderr)}; check the network and "
            "[archive] follow, then run `kvm-digest fetch` again"
        )


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return redact.text(lines[-1]) if lines else "no message from git"
