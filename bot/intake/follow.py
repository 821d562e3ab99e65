"""Follow a public-inbox v2 inbox over git (lore), without a mailbox.

`[archive] follow = "https://lore.kernel.org/kvm"` keeps a mirror of the
inbox's epochs under the data dir (or `[archive] path`): `git/0.git`,
`git/1.git`, ... each a `git clone --mirror` of `<url>/N`, which is how
public-inbox serves them over the web (`<url>/git/N.git` for an inbox on
disk). A fetch updates every epoch we have, each on its own, then asks for
the next one (`git ls-remote`): public-inbox starts a new epoch as an inbox
grows, and a missing one is simply not there yet. That probe works the same
for lore over https and for a local or file:// inbox, with no manifest to
parse. The index reads the result as one archive (bot/store/inbox.py), so
digests carry the inbox's own commit ids.

Bounded: at most `[archive] max_epochs` epochs, and at most
`max_fetch_bytes` brought by one fetch (git is stopped at the bound and its
unfinished packs removed), so a server that answers every epoch number, or
sends without end, is stopped with one sentence, keeping what was complete.

A newcomer who wants last week need not clone the list's whole history:
with a `since` date (`[archive] follow_since`, `fetch --since`), the first
fetch probes each epoch's newest commit with a fetch of depth 1 (one
message), skips the epochs that end before that day, and clones the first
one that does not with `--shallow-since`; digests of earlier ranges cannot
be made, and fsck and health say so (bot/store/inbox.py, `partial`). Days
are commit dates, which public-inbox sets when it archives a message (never
before it arrived), so no mail from that day on is left out.

git runs as a subprocess (no shell), never prompting for credentials, and
names itself as kvm-digest in the User-Agent of its HTTP requests. A URL
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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from bot import redact
from bot.config import ArchiveSection
from bot.errors import DigestError
from bot.store import writable
from bot.store.gitenv import git_env
from bot.store.inbox import epoch_paths
from bot.version import user_agent

log = logging.getLogger(__name__)

_ENV = git_env(GIT_TERMINAL_PROMPT="0")
Env = dict[str, str]

POLL_SECONDS = 0.25
"""How often a running git's download is measured against the byte bound."""


def split_credentials(url: str) -> tuple[str, str]:
    """(the URL without its userinfo, "user:password" or "") for an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, ""
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), f"{unquote(user)}:{unquote(password)}"


def git_env(url: str) -> Env:
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


def git(*args: str) -> list[str]:
    """A git command line that names kvm-digest and its version to web servers."""
    return ["git", "-c", f"http.userAgent={user_agent()}", *args]


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
    since: date | None = None
    """The first clone started at this day (shallow); earlier epochs were skipped."""
    skipped: int = 0
    """Epochs left out because they end before `since`."""

    def __str__(self) -> str:
        said = []
        if self.since is not None:
            said.append(
                f"from {self.since.isoformat()} on only (shallow; {self.skipped} older "
                "epochs skipped)"
            )
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


class LocalRefusal(DigestError):
    """git failed on our side (the mirror is another user's, or cannot be
    written): no epoch can be fetched, so the fetch stops, with one sentence."""


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


def fetch(url: str, inbox: Path, bounds: Bounds, since: date | None = None) -> Fetched:
    """Bring the local mirror of the inbox at `url` up to date; say what changed.

    Each epoch is fetched on its own: one that fails (a server that dropped
    an old epoch, a broken repository) is a problem of that epoch, and the
    others are still fetched, new ones too. `since` shapes the first fetch
    only (an empty mirror): see the module's docstring. Afterwards every
    fetch brings what is new, whatever `since`.
    """
    done = Fetched()
    budget = Budget(bounds.max_bytes)
    bare, _ = split_credentials(url)
    env = git_env(url)
    shown = redact.text(url)
    have = [(_number(epoch), epoch) for epoch in epoch_paths(inbox)]
    for number, epoch in have:
        try:
            _forget_credentials(epoch, epoch_url(bare, number))
            _update(epoch, budget, env, inbox)
        except OverBudget:
            done.problems.append(_over_budget(shown, bounds))
            return done
        except LocalRefusal:
            raise
        except DigestError as err:
            done.problems.append(str(err))
            continue
        done.updated.append(number)
    number, shallow = (have[-1][0] + 1, None) if have else (0, None)
    if not have and since is not None:
        number, shallow = first_epoch(bare, since, inbox, env, bounds.max_epochs)
        done.since, done.skipped = since, number
    first = not have
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
            if not _clone(epoch_url(bare, number), dest, first, budget, env, shallow):
                return done
        except OverBudget:
            done.problems.append(_over_budget(shown, bounds))
            return done
        done.cloned.append(number)
        number, first, shallow = number + 1, False, None


def first_epoch(
    url: str, since: date, inbox: Path, env: Env, max_epochs: int
) -> tuple[int, list[str]]:
    """The first epoch holding mail from `since` on, and how to clone it shallow.

    Epochs are probed oldest first, each by its newest commit (a fetch of
    depth 1: one message), until one ends on or after `since`; if none does
    (nothing was posted since), the newest epoch is cloned at depth 1, so
    that later fetches have somewhere to continue from. At most `max_epochs`
    are probed: a server that answers every epoch number stops there too.
    """
    day = datetime(since.year, since.month, since.day, tzinfo=UTC)
    number = 0
    while number < max_epochs:
        newest = _newest(epoch_url(url, number), inbox, number == 0, env)
        if newest is None:
            break
        if newest >= day.timestamp():
            return number, [f"--shallow-since={day.strftime('%Y-%m-%d %H:%M:%S +0000')}"]
        number += 1
    return max(number - 1, 0), ["--depth=1"]


def _newest(url: str, inbox: Path, first: bool, env: Env) -> int | None:
    """The committer time of an epoch's newest commit; None when there is no such epoch."""
    probe = inbox / "git" / "probe.partial"
    shutil.rmtree(probe, ignore_errors=True)
    probe.parent.mkdir(parents=True, exist_ok=True)
    try:
        _git("init", "--quiet", "--bare", str(probe), what=f"create {probe}", where=inbox)
        fetched = git("-C", str(probe), "fetch", "--quiet", "--depth=1", _remote(url))
        result = _run(fetched, env)
        if result.returncode != 0:
            _refuse_local(result.stderr, f"fetch {url}", inbox)
            if first:
                raise DigestError(
                    f"cannot fetch {url}: {_last_line(result.stderr)}; check [archive] "
                    "follow (the inbox URL, e.g. https://lore.kernel.org/kvm) and the network"
                )
            log.debug("no epoch at %s: %s", url, _last_line(result.stderr))
            return None
        shown = _run(["git", "-C", str(probe), "log", "-1", "--format=%ct", "FETCH_HEAD"])
        return int(shown.stdout.strip() or 0)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def refs(url: str) -> dict[str, str]:
    """The refs of the inbox's first epoch (`git ls-remote`), for check-config --connect."""
    bare, _ = split_credentials(url)
    where = epoch_url(bare, 0)
    result = _run(git("ls-remote", _remote(where)), git_env(url))
    if result.returncode != 0:
        raise DigestError(
            f"cannot list the refs of {where}: {_last_line(result.stderr)}; check [archive] "
            "follow (the inbox URL, e.g. https://lore.kernel.org/kvm) and the network"
        )
    pairs = (line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    return {name: oid for oid, name in pairs}


def _over_budget(url: str, bounds: Bounds) -> str:
    return (
        f"stopped fetching from {url}: one fetch may bring at most [archive] "
        f"max_fetch_bytes = {bounds.max_bytes} bytes; the complete epochs are kept and "
        "the next fetch goes on (raise max_fetch_bytes if one epoch is larger)"
    )


def _update(epoch: Path, budget: Budget, env: Env, inbox: Path) -> None:
    args = ["-C", str(epoch), "fetch", "--quiet", "--prune", "origin"]
    result = _bounded(args, epoch, budget, env)
    if result.returncode != 0:
        _refuse_local(result.stderr, f"fetch {epoch}", inbox)
        raise DigestError(
            f"git cannot fetch {epoch}: {_last_line(result.stderr)}; the other epochs are "
            "fetched as usual. Check the network and [archive] follow (a server that no "
            "longer serves an old epoch leaves our copy of it as it was)"
        )


def _exists(url: str, env: Env) -> bool:
    """True when a repository answers at `url` (its refs only: no objects are fetched)."""
    result = _run(git("ls-remote", _remote(url)), env)
    return result.returncode == 0 and bool(result.stdout.strip())


def _forget_credentials(epoch: Path, bare: str) -> None:
    """An epoch cloned with credentials in its URL (an older version did) loses them."""
    result = _run(["git", "-C", str(epoch), "config", "--get", "remote.origin.url"])
    if split_credentials(result.stdout.strip())[1]:
        _git("-C", str(epoch), "config", "remote.origin.url", bare, what=f"update {epoch}")


def _clone(
    url: str,
    dest: Path,
    first: bool,
    budget: Budget,
    env: Env,
    shallow: list[str] | None = None,
) -> bool:
    """Clone one epoch; False when the inbox has no such epoch (yet).

    The clone goes to a temporary name and is renamed when complete, so an
    interrupted clone is never mistaken for an epoch. `shallow` options
    (--shallow-since, --depth) need git's transport, even for a local inbox.
    """
    if not first and not _exists(url, env):
        log.debug("no epoch at %s yet", url)
        return False
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    source = _remote(url) if shallow else url
    args = ["clone", "--quiet", "--mirror", *(shallow or []), source, str(partial)]
    try:
        result = _bounded(args, partial, budget, env)
    except OverBudget:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        _refuse_local(result.stderr, f"clone {url}", dest.parent.parent)
        if first:
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
    args: list[str], where: Path, budget: Budget, env: Env
) -> subprocess.CompletedProcess[str]:
    """Run git, stopping it when `where` grows by more than the budget has left."""
    before = _size(where)
    proc = subprocess.Popen(
        git(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    while True:
        try:
            # Retried after a timeout, communicate() loses none of the output
            # (and needs no temporary file: the unit's /tmp may be read-only).
            _, stderr = proc.communicate(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if _size(where) - before > budget.left:
                proc.kill()
                proc.communicate()
                _drop_temporary_packs(where)
                raise OverBudget from None
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


def _remote(url: str) -> str:
    """`url` as git's transport needs it: a local path becomes a file:// URL
    (a plain path is copied as files, and --depth is ignored)."""
    if "://" in url:
        return url
    return Path(url).absolute().as_uri()


def _number(epoch: Path) -> int:
    return int(epoch.name.removesuffix(".git"))


def _run(argv: list[str], env: Env | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env or _ENV, check=False)


def _git(*args: str, what: str, where: Path | None = None) -> None:
    """Run git; a failure says its cause: the repository `where` is another
    user's or cannot be written, or else the network or the URL."""
    result = _run(git(*args))
    if result.returncode == 0:
        return
    if where is not None:
        _refuse_local(result.stderr, what, where)
    raise DigestError(
        f"git cannot {what}: {_last_line(result.stderr)}; check the network and "
        "[archive] follow, then run `kvm-digest fetch` again"
    )


def _refuse_local(stderr: str, what: str, where: Path) -> None:
    """Raise when git failed on our side, not the network's: the mirror
    `where` is another user's, or cannot be written (full, read-only)."""
    refused = writable.ownership(where, stderr)
    if refused:
        raise LocalRefusal(refused)
    if writable.git_errno(stderr) is not None:
        raise LocalRefusal(
            f"git cannot {what}: {_last_line(stderr)}; {writable.from_git(stderr, where)}"
        )


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return redact.text(lines[-1]) if lines else "no message from git"
