"""Reading an archive's messages through `git cat-file`: sizes first, failures as failures.

public-inbox keeps each message as blob `m` of its commit, and a commit
without `m` is a deletion. Two things follow for a reader of someone else's
archive. First, "no `m`" must be a fact about the commit, not what a dying
`git cat-file` looks like: a damaged pack or a missing object stops the
reading with an error (ArchiveError), so nothing later is taken for a
deletion and skipped for good. Second, a blob's size is known before it is
read (`--batch-check`), so a message over `[import] max_message_size` is
never read into memory: it is returned as `Unread`, with the reason, for
the index to record in `failures` and move past.

Two long-running git processes do the work (one answering sizes, one
contents), in chunks small enough that our requests always fit in a pipe
while git answers, so neither side can block the other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from bot.errors import ArchiveError
from bot.record import Record
from bot.store.gitenv import git_env

CHUNK = 256
"""Commits asked about at a time: 256 requests are ~12 KB, well under a pipe's 64 KB."""
ANSWER_PIPE = 1 << 20
"""Bytes of git's answers its pipe holds (Linux's default limit for a pipe,
/proc/sys/fs/pipe-max-size). With the usual 64 KB git can inflate only
about six messages before it waits for us, so its work and ours alternate;
with 1 MB it runs a hundred ahead while we index: a fifth less time spent
waiting for it in mirror indexing (benchmarks/intake.py)."""


class Unread(Record):
    """A commit whose `m` is not read as a message, and why (recorded in `failures`)."""

    commit_id: str
    where: str
    reason: str


class Info(Record):
    """What `git cat-file --batch-check` says of one commit's `m`."""

    oid: bytes
    kind: bytes
    size: int


class CatFile:
    """One `git cat-file --batch` or `--batch-check` process in a repository."""

    def __init__(self, repo: Path, mode: str) -> None:
        # Here, not at the top: the index imports this module for Unread, and
        # a digest from a caught-up index starts no git (subprocess is a
        # twentieth of its start-up).
        import fcntl
        import subprocess

        self.repo = repo
        # git's complaint, read when it stops answering; closed with the process.
        # In memory, not in /tmp: the service's /tmp may be read-only.
        self.errors = open(os.memfd_create("git-errors"), "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["git", "-C", str(repo), "cat-file", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            env=git_env(),
        )
        assert self.proc.stdout is not None
        # Only speed depends on it: a system that refuses (a lower
        # pipe-max-size, not Linux) reads through the pipe it has.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, ANSWER_PIPE)

    def ask(self, names: list[bytes]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"".join(name + b"\n" for name in names))
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self.failed(names[0].decode()) from None

    def line(self, about: str) -> bytes:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.endswith(b"\n"):
            raise self.failed(about)
        return line[:-1]

    def content(self, size: int, about: str) -> bytes:
        assert self.proc.stdout is not None
        # The newline git ends each content with, read apart: not a copy of
        # every message without its last byte.
        data = self.proc.stdout.read(size)
        if len(data) != size or self.proc.stdout.read(1) != b"\n":
            raise self.failed(about)
        return data

    def failed(self, about: str) -> ArchiveError:
        """git stopped answering: the archive is damaged (or git is broken)."""
        self.stop()
        self.errors.seek(0)
        said = [line for line in self.errors.read().decode(errors="replace").splitlines() if line]
        return damaged(self.repo, about, said[-1] if said else "git cat-file stopped answering")

    def close(self) -> None:
        self.stop()
        self.errors.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def damaged(repo: Path, about: str, said: str) -> ArchiveError:
    return ArchiveError(
        f"the archive {repo} is damaged at commit {about} ({said}); nothing from there on "
        f"was read. Run `git -C {repo} fsck`, then restore it from a backup (for a "
        "followed inbox: move that epoch aside and run `kvm-digest fetch`)"
    )


def infos(
    repo: Path, revs: list[bytes], is_deletion: Callable[[str], bool]
) -> Iterator[tuple[str, Info | None]]:
    """Each commit with what its `m` is; None for a real deletion (no `m` in it).

    `is_deletion` is asked only when git says `<rev>:m missing`, which it
    also says when the commit or its tree cannot be found: only a readable
    tree without `m` is a deletion, anything else is damage.
    """
    check = CatFile(repo, "--batch-check")
    try:
        for start in range(0, len(revs), CHUNK):
            chunk = revs[start : start + CHUNK]
            check.ask([rev + b":m" for rev in chunk])
            for rev in chunk:
                commit = rev.decode()
                yield commit, _info(repo, commit, check.line(commit), is_deletion)
    finally:
        check.close()


def _info(repo: Path, commit: str, line: bytes, is_deletion: Callable[[str], bool]) -> Info | None:
    words = line.split()
    if len(words) == 3 and words[2].isdigit():
        return Info(words[0], words[1], int(words[2]))
    if words and words[-1] == b"missing" and is_deletion(commit):
        return None
    raise damaged(repo, commit, line.decode(errors="replace"))


def messages(
    repo: Path,
    revs: list[bytes],
    max_size: int | None,
    is_deletion: Callable[[str], bool],
) -> Iterator[tuple[str, bytes | Unread | None]]:
    """Yield (commit id, raw message | Unread | None for a deletion), in `revs` order."""
    cat = CatFile(repo, "--batch")
    pending: list[tuple[str, Info | None]] = []
    sizes = infos(repo, revs, is_deletion)
    try:
        while True:
            try:
                item = next(sizes, None)
            except ArchiveError:
                # Damage found by its size: the commits before it are read.
                # (Damage found in a content is raised by _contents, once the
                # commits before it are yielded: git cannot read further.)
                yield from _contents(cat, pending, max_size)
                raise
            if item is None:
                break
            pending.append(item)
            if len(pending) >= CHUNK:
                yield from _contents(cat, pending, max_size)
                pending = []
        yield from _contents(cat, pending, max_size)
    finally:
        sizes.close()
        cat.close()


def _contents(
    cat: CatFile, pending: list[tuple[str, Info | None]], max_size: int | None
) -> Iterator[tuple[str, bytes | Unread | None]]:
    decided = [(commit, info, unread(cat.repo, commit, info, max_size)) for commit, info in pending]
    wanted = [info.oid for _, info, skip in decided if info is not None and skip is None]
    if wanted:
        cat.ask(wanted)
    for commit, info, skip in decided:
        if info is None or skip is not None:
            yield commit, skip
            continue
        header = cat.line(commit).split()
        if header != [info.oid, b"blob", str(info.size).encode()]:
            raise damaged(cat.repo, commit, b" ".join(header).decode(errors="replace"))
        yield commit, cat.content(info.size, commit)


def unread(repo: Path, commit: str, info: Info | None, max_size: int | None) -> Unread | None:
    """Why `m` is not to be read as a message, or None when it is one to read."""
    if info is None:
        return None
    where = f"{repo} commit {commit}"
    if info.kind != b"blob":
        return Unread(commit, where, f"its m is a git {info.kind.decode()}, not a message")
    if max_size is not None and info.size > max_size:
        return Unread(
            commit,
            where,
            f"it is {info.size} bytes, more than the limit of {max_size} ([import] "
            f"max_message_size); it stays in the archive as blob {info.oid.decode()}",
        )
    return None
