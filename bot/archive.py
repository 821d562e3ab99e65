"""The archive: a git repository in the public-inbox v2 epoch layout.

Git is the source of truth, as in public-inbox: one commit per message on
branch `master`, the raw bytes in blob `m`, the author and date taken from the
message, the subject as the commit message. So `git log` over it reads like
lore, and a digest range `A..B` is a git range. The SQLite index is derived
from this and can always be rebuilt.

A mirror (`[archive] path`, e.g. a `git clone --mirror` of lore's kvm epoch)
is opened read-only and indexed in place.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pygit2

from bot.errors import DigestError
from bot.message import ParsedMessage

BRANCH = "refs/heads/master"
_SIG_CRUD = re.compile(r"[<>\x00-\x1f\x7f]+")
_SORT = pygit2.GIT_SORT_TOPOLOGICAL | pygit2.GIT_SORT_REVERSE


class Archive:
    """A public-inbox v2 epoch: append messages, walk them in order."""

    def __init__(self, path: Path, repo: pygit2.Repository, writable: bool) -> None:
        self.path = path
        self.repo = repo
        self.writable = writable

    @classmethod
    def create(cls, path: Path) -> Archive:
        """Open the bot's own archive, creating an empty one if needed."""
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            repo = pygit2.init_repository(str(path), bare=True, initial_head="master")
            # public-inbox sets these so a mirror of the archive serves well.
            repo.config["core.logAllRefUpdates"] = "false"
            repo.config["gc.auto"] = "0"
        return cls.open(path, writable=True)

    @classmethod
    def open(cls, path: Path, writable: bool = False) -> Archive:
        """Open an existing archive or public-inbox epoch."""
        try:
            repo = pygit2.Repository(str(path))
        except pygit2.GitError as err:
            raise DigestError(
                f"{path} is not a git repository; point [archive] path at a "
                "public-inbox epoch (e.g. a clone of lore's kvm/git/0.git)"
            ) from err
        return cls(path, repo, writable)

    def head(self) -> str | None:
        """The id of the newest message commit, or None for an empty archive."""
        ref = self.repo.references.get(BRANCH)
        if ref is None:
            try:
                return str(self.repo.head.target)
            except pygit2.GitError:
                return None
        return str(ref.target)

    def contains(self, commit_id: str) -> bool:
        """True when `commit_id` is on the archive's history (not rewritten away)."""
        head = self.head()
        if head is None:
            return False
        if head == commit_id:
            return True
        try:
            return self.repo.descendant_of(head, commit_id)
        except (pygit2.GitError, ValueError, KeyError):
            return False

    def walk(self, after: str | None = None) -> Iterator[tuple[str, bytes | None]]:
        """Yield (commit id, raw message) oldest first, after commit `after`.

        public-inbox records deletions as commits without `m`; those yield
        None so the caller can still move its position past them.
        """
        head = self.head()
        if head is None:
            return
        walker = self.repo.walk(head, _SORT)
        if after:
            walker.hide(after)
        for commit in walker:
            # pygit2's Tree has no .get(); a deletion commit has no "m".
            entry = commit.tree["m"] if "m" in commit.tree else None  # noqa: SIM401
            data = self.repo[entry.id].data if entry is not None else None
            yield str(commit.id), data

    def count(self, after: str | None = None) -> int:
        """How many commits `walk(after)` would yield."""
        head = self.head()
        if head is None:
            return 0
        walker = self.repo.walk(head, pygit2.GIT_SORT_NONE)
        if after:
            walker.hide(after)
        return sum(1 for _ in walker)

    def read(self, commit_id: str) -> bytes:
        """The raw message stored in one commit."""
        commit = self.repo[commit_id]
        return self.repo[commit.tree["m"].id].data

    def append(self, messages: Iterable[tuple[bytes, ParsedMessage]]) -> list[str]:
        """Append messages as commits; return their ids in order.

        The objects are written first and flushed to disk, then the branch
        moves once: a crash leaves either the old head or the new head, never
        a head that points at a missing object.
        """
        if not self.writable:
            raise DigestError(
                f"the archive at {self.path} is a read-only mirror; new mail "
                "reaches it through `git fetch`, not through kvm-digest"
            )
        head = self.head()
        parents = [pygit2.Oid(hex=head)] if head else []
        ids: list[str] = []
        blob_mode = pygit2.enums.FileMode.BLOB
        for raw, parsed in messages:
            blob = self.repo.create_blob(raw)
            builder = self.repo.TreeBuilder()
            builder.insert("m", blob, blob_mode)
            tree = builder.write()
            sig = _signature(parsed)
            subject = parsed.subject.full or "(no subject)"
            commit = self.repo.create_commit(None, sig, sig, subject + "\n", tree, parents)
            parents = [commit]
            ids.append(str(commit))
        if ids:
            os.sync()
            self.repo.references.create(BRANCH, parents[0], force=True)
        return ids


def _signature(parsed: ParsedMessage) -> pygit2.Signature:
    """Author and committer from the message's From and Date, as public-inbox."""
    name = _SIG_CRUD.sub(" ", parsed.from_name).strip()
    addr = _SIG_CRUD.sub("", parsed.from_addr).strip()
    when = parsed.date if parsed.date is not None else parsed.received
    if when is None or not 0 <= when < 2**37:
        when = 0
    return pygit2.Signature(name or addr or "unknown", addr or "unknown", when, parsed.date_offset)


class WriterLock:
    """One writer per data directory: the importer, the listener or the daemon.

    An exclusive flock on `<data-dir>/lock`, released by the kernel when the
    process dies, so a crash never leaves a stale lock behind.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "lock"
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DigestError(
                f"another kvm-digest process (pid {holder}) is writing to "
                f"{self.path.parent}; stop it or wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
