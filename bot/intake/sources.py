"""Where imported mail comes from: mbox, Maildir, .eml, public-inbox git, bundles.

Each source yields (position, raw bytes) in its own order. Git sources
resume after a commit id, which can be checked against the source's history,
so the next run reads only new commits. Files are read whole every time: a
message number cannot tell an appended mbox from a replaced one, and
re-reading is harmless, since the importer drops messages it already has.
"""

from __future__ import annotations

import hashlib
import mailbox
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2

from bot.errors import MailError
from bot.store.archive import Archive
from bot.store.gitenv import git_env
from bot.store.gitread import Unread
from bot.store.inbox import epoch_paths

_MBOXRD_QUOTED = re.compile(rb"^>(>*From )", re.M)
_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")


@dataclass
class Source:
    """A mail source the importer reads; `key` identifies it across runs."""

    kind: str
    path: Path
    key: str
    label: str = ""
    """What the user named (a bundle is read from a cached clone at `path`)."""
    max_size: int | None = None
    """Git sources know a message's size before reading it: larger ones are not read."""

    resumable = False
    """True when `read(after)` can safely skip what an earlier run read."""

    def count(self, after: str | None = None) -> int:
        """How many messages `read(after)` yields (for the progress bar)."""
        raise NotImplementedError

    def read(self, after: str | None = None) -> Iterator[tuple[str, bytes | Unread]]:
        raise NotImplementedError

    def donors(self) -> list[Path]:
        """Git repositories holding the messages as blobs, for the archive to copy from."""
        return []


class MboxSource(Source):
    """An mbox file; mboxrd `>From ` quoting is undone (lore serves mboxrd)."""

    def _box(self) -> mailbox.mbox:
        return mailbox.mbox(self.path, factory=None, create=False)

    def count(self, after: str | None = None) -> int:
        return len(self._box())

    def read(self, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        box = self._box()
        for number, key in enumerate(box.iterkeys(), 1):
            yield str(number), _MBOXRD_QUOTED.sub(rb"\1", box.get_bytes(key))


class MaildirSource(Source):
    """A Maildir folder, read in delivery order (file names start with time)."""

    def _keys(self) -> tuple[mailbox.Maildir, list[str]]:
        box = mailbox.Maildir(self.path, factory=None, create=False)
        return box, sorted(box.iterkeys())

    def count(self, after: str | None = None) -> int:
        return len(self._keys()[1])

    def read(self, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        box, keys = self._keys()
        for number, key in enumerate(keys, 1):
            yield str(number), box.get_bytes(key)


class EmlSource(Source):
    """One message in a file."""

    def count(self, after: str | None = None) -> int:
        return 1

    def read(self, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        yield "1", self.path.read_bytes()


class GitSource(Source):
    """A public-inbox epoch (or several, for a v2 inbox), read in commit order."""

    resumable = True

    def epochs(self) -> list[Path]:
        return epoch_paths(self.path) or [self.path]

    def count(self, after: str | None = None) -> int:
        return sum(n for _, n in self._plan(after))

    def donors(self) -> list[Path]:
        return self.epochs()

    def _plan(self, after: str | None) -> list[tuple[Archive, int]]:
        plan = []
        for epoch in self.epochs():
            archive = Archive.open(epoch)
            plan.append((archive, archive.count(self._position(archive, after))))
        return plan

    @staticmethod
    def _position(archive: Archive, after: str | None) -> str | None:
        return after if after and archive.contains(after) else None

    def read(self, after: str | None = None) -> Iterator[tuple[str, bytes | Unread]]:
        epochs = [Archive.open(e) for e in self.epochs()]
        # Resume in the epoch that holds `after`; earlier epochs are done.
        start = next((i for i, a in enumerate(epochs) if after and a.contains(after)), 0)
        for archive in epochs[start:]:
            for commit_id, raw in archive.walk(self._position(archive, after), self.max_size):
                if raw is not None:
                    yield commit_id, raw


def open_source(path: Path, cache_dir: Path, max_size: int | None = None) -> Source:
    """Recognise a mail source by what it holds, not by its name."""
    key = str(path.resolve())
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            return MaildirSource("maildir", path, key, str(path))
        if (path / "git").is_dir() or (path / "HEAD").exists() or (path / ".git").exists():
            return GitSource("git", path, key, str(path), max_size)
        raise MailError(
            f"{path} is a directory but neither a Maildir (cur/, new/) nor a "
            "git repository; give an mbox, a Maildir, an .eml file or a "
            "public-inbox git directory"
        )
    if not path.exists():
        raise MailError(f"{path} does not exist; check the path")
    with path.open("rb") as f:
        start = f.read(4096)
    if start.startswith((b"# v2 git bundle", b"# v3 git bundle")):
        return GitSource("bundle", unbundle(path, cache_dir), key, str(path), max_size)
    if start.startswith(b"From "):
        return MboxSource("mbox", path, key, str(path))
    if _HEADER_LINE.match(start.lstrip(b"\r\n")):
        return EmlSource("eml", path, key, str(path))
    raise MailError(
        f"{path} is not mail: expected an mbox, a Maildir, an .eml file, a "
        "public-inbox git directory or a git bundle"
    )


def unbundle(bundle: Path, cache_dir: Path) -> Path:
    """Fetch a git bundle into a cached bare repository and return its path.

    libgit2 cannot read bundles, so git itself fetches (no shell involved).
    Fetching again on the next run brings only what is new.
    """
    name = hashlib.sha1(str(bundle.resolve()).encode()).hexdigest()[:16]
    repo = cache_dir / f"{name}.git"
    if not (repo / "HEAD").exists():
        pygit2.init_repository(str(repo), bare=True, initial_head="master")
    result = subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "fetch",
            "--quiet",
            "--no-tags",
            str(bundle.resolve()),
            "+refs/heads/*:refs/heads/*",
        ],
        capture_output=True,
        text=True,
        env=git_env(),
        check=False,
    )
    if result.returncode != 0:
        raise MailError(
            f"git cannot read the bundle {bundle}: {result.stderr.strip()}; "
            "check that it is a complete git bundle"
        )
    return repo
