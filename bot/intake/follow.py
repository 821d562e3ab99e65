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
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from bot import redact
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


@dataclass
class Fetched:
    """What one fetch did, for the one-line summary."""

    updated: list[int] = field(default_factory=list)
    cloned: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        said = []
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


def fetch(url: str, inbox: Path) -> Fetched:
    """Bring the local mirror of the inbox at `url` up to date; say what changed."""
    done = Fetched()
    bare, _ = split_credentials(url)
    env = git_env(url)
    have = epoch_paths(inbox)
    for number, epoch in enumerate(have):
        _forget_credentials(epoch, epoch_url(bare, number))
        _git(
            "-C",
            str(epoch),
            "fetch",
            "--quiet",
            "--prune",
            "origin",
            what=f"fetch {epoch}",
            env=env,
        )
        done.updated.append(number)
    number = len(have)
    while _clone(epoch_url(bare, number), inbox / "git" / f"{number}.git", number == 0, env):
        done.cloned.append(number)
        number += 1
    return done


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


def _clone(url: str, dest: Path, first: bool, env: dict[str, str]) -> bool:
    """Clone one epoch; False when the inbox has no such epoch (yet).

    The clone goes to a temporary name and is renamed when complete, so an
    interrupted clone is never mistaken for an epoch.
    """
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["git", "clone", "--quiet", "--mirror", url, str(partial)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
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
