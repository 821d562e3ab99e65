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

A newcomer who wants last week need not clone the list's whole history:
with a `since` date (`[archive] follow_since`, `fetch --since`), the first
fetch probes each epoch's newest commit with a fetch of depth 1 (one
message), skips the epochs that end before that day, and clones the first
one that does not with `--shallow-since`; digests of earlier ranges cannot
be made, and fsck and health say so (bot/store/inbox.py, `partial`). Days
are commit dates, which public-inbox sets when it archives a message (never
before it arrived), so no mail from that day on is left out.

git runs as a subprocess (no shell), never prompting for credentials, and
names itself as kvm-digest in the User-Agent of its HTTP requests.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from bot.errors import DigestError
from bot.store import writable
from bot.store.inbox import epoch_paths
from bot.version import user_agent

log = logging.getLogger(__name__)

_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}


@dataclass
class Fetched:
    """What one fetch did, for the one-line summary."""

    updated: list[int] = field(default_factory=list)
    cloned: list[int] = field(default_factory=list)
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


def git(*args: str) -> list[str]:
    """A git command line that names kvm-digest and its version to web servers."""
    return ["git", "-c", f"http.userAgent={user_agent()}", *args]


def fetch(url: str, inbox: Path, since: date | None = None) -> Fetched:
    """Bring the local mirror of the inbox at `url` up to date; say what changed.

    `since` shapes the first fetch only (an empty mirror): see the module's
    docstring. Afterwards every fetch brings what is new, whatever `since`.
    """
    done = Fetched()
    have = [(_number(epoch), epoch) for epoch in epoch_paths(inbox)]
    for number, epoch in have:
        _git(
            "-C",
            str(epoch),
            "fetch",
            "--quiet",
            "--prune",
            "origin",
            what=f"fetch {epoch}",
            where=inbox,
        )
        done.updated.append(number)
    number, shallow = (have[-1][0] + 1, None) if have else (0, None)
    if not have and since is not None:
        number, shallow = first_epoch(url, since, inbox)
        done.since, done.skipped = since, number
    first = not have
    while _clone(epoch_url(url, number), inbox / "git" / f"{number}.git", first, shallow):
        done.cloned.append(number)
        number, first, shallow = number + 1, False, None
    return done


def first_epoch(url: str, since: date, inbox: Path) -> tuple[int, list[str]]:
    """The first epoch holding mail from `since` on, and how to clone it shallow.

    Epochs are probed oldest first, each by its newest commit (a fetch of
    depth 1: one message), until one ends on or after `since`; if none does
    (nothing was posted since), the newest epoch is cloned at depth 1, so
    that later fetches have somewhere to continue from.
    """
    day = datetime(since.year, since.month, since.day, tzinfo=UTC)
    number = 0
    while (newest := _newest(epoch_url(url, number), inbox, first=number == 0)) is not None:
        if newest >= day.timestamp():
            return number, [f"--shallow-since={day.strftime('%Y-%m-%d %H:%M:%S +0000')}"]
        number += 1
    return number - 1, ["--depth=1"]


def _newest(url: str, inbox: Path, first: bool) -> int | None:
    """The committer time of an epoch's newest commit; None when there is no such epoch."""
    probe = inbox / "git" / "probe.partial"
    shutil.rmtree(probe, ignore_errors=True)
    probe.parent.mkdir(parents=True, exist_ok=True)
    try:
        _git("init", "--quiet", "--bare", str(probe), what=f"create {probe}", where=inbox)
        result = _run(git("-C", str(probe), "fetch", "--quiet", "--depth=1", _remote(url)))
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
    where = epoch_url(url, 0)
    result = _run(git("ls-remote", _remote(where)))
    if result.returncode != 0:
        raise DigestError(
            f"cannot list the refs of {where}: {_last_line(result.stderr)}; check [archive] "
            "follow (the inbox URL, e.g. https://lore.kernel.org/kvm) and the network"
        )
    pairs = (line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    return {name: oid for oid, name in pairs}


def _clone(url: str, dest: Path, first: bool, shallow: list[str] | None = None) -> bool:
    """Clone one epoch; False when the inbox has no such epoch (yet).

    The clone goes to a temporary name and is renamed when complete, so an
    interrupted clone is never mistaken for an epoch. `shallow` options
    (--shallow-since, --depth) need git's transport, even for a local inbox.
    """
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    source = _remote(url) if shallow else url
    result = _run(git("clone", "--quiet", "--mirror", *(shallow or []), source, str(partial)))
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        _refuse_local(result.stderr, f"clone {url}", dest.parent.parent)
        if first:
            raise DigestError(
                f"cannot clone {url}: {_last_line(result.stderr)}; check [archive] follow "
                "(the inbox URL, e.g. https://lore.kernel.org/kvm) and the network"
            )
        log.debug("no epoch at %s yet: %s", url, _last_line(result.stderr))
        return False
    partial.rename(dest)
    log.info("cloned new epoch %s", url)
    return True


def _remote(url: str) -> str:
    """`url` as git's transport needs it: a local path becomes a file:// URL
    (a plain path is copied as files, and --depth is ignored)."""
    if "://" in url:
        return url
    return Path(url).absolute().as_uri()


def _number(epoch: Path) -> int:
    return int(epoch.name.removesuffix(".git"))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=_ENV, check=False)


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
        raise DigestError(refused)
    if writable.git_errno(stderr) is not None:
        raise DigestError(
            f"git cannot {what}: {_last_line(stderr)}; {writable.from_git(stderr, where)}"
        )


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message from git"
