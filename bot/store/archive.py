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

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import pygit2

from bot.errors import ArchiveError, DigestError
from bot.parse.message import ParsedMessage
from bot.store import gitread
from bot.store.gitenv import git_env
from bot.store.gitread import Unread
from bot.store.writable import advice, from_git, ownership

BRANCH = "refs/heads/master"

log = logging.getLogger(__name__)

# libgit2 caches every object it looks up (each new commit's parent, for
# one), up to 256 MB: a live daemon's RSS would grow by ~500 bytes a message
# for years. We never re-read through libgit2 (walks use git cat-file), so
# the cache buys nothing. Measured in the soak: benchmarks/load.py.
pygit2.settings.enable_caching(False)
_SIG_CRUD = re.compile(r"[<>\x00-\x1f\x7f]+")
# What libgit2 trims from both ends of a name and an address before it
# refuses an empty one (signature.c, is_crud); git fast-import writes them
# as given. Trimming them here keeps a `From: \` header from failing a
# write, and gives both writers the same author for the same mail.
_SIG_TRIM = "".join(map(chr, range(33))) + ",:;<>\"\\'"
_SORT = pygit2.GIT_SORT_TOPOLOGICAL | pygit2.GIT_SORT_REVERSE


class Archive:
    """A public-inbox v2 epoch: append messages, walk them in order."""

    def __init__(self, path: Path, repo: pygit2.Repository, writable: bool) -> None:
        self.path = path
        self.repo = repo
        self.writable = writable
        self.bulk_writer: FastImport | None = None
        """The git fast-import that large batches go to, inside bulk()."""

    @contextlib.contextmanager
    def bulk(self, donors: Sequence[Path] = ()) -> Iterator[None]:
        """Send the large batches appended inside to one git fast-import.

        Without it, each large batch starts one of its own and waits for it.
        `donors`: git repositories the messages come from (an import's
        public-inbox epochs). A message's blob that one of them holds is
        copied from it as git stored it, not compressed again (Donors).
        """
        if self.bulk_writer is not None or not self.writable:
            yield
            return
        self.bulk_writer = FastImport(self.path, Donors.open(donors))
        try:
            yield
        finally:
            writer, self.bulk_writer = self.bulk_writer, None
            writer.close()

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
            refused = ownership(path, str(err))
            if refused:
                raise DigestError(refused) from err
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

    def base(self) -> str | None:
        """The commit just before the oldest one here, when a shallow clone left it out.

        A clone with --shallow-since (follow_since) starts at a boundary
        commit whose parent is absent, but whose object still names it: that
        id is where the archive's history really continues, lore's id for
        "before the first message we have", so digest ranges from the start
        name it as lore would, not 0000000.
        """
        try:
            boundary = (self.path / "shallow").read_text().split()
        except OSError:
            return None
        oldest = [c for c in boundary if _is_oid(c)]
        if len(oldest) != 1:
            return None  # several boundaries: no single commit before them
        # The raw object: libgit2 shows a shallow commit without its parents.
        try:
            _kind, raw = self.repo.odb.read(oldest[0])
        except (KeyError, ValueError, pygit2.GitError):
            return None
        header = bytes(raw).split(b"\n\n", 1)[0].splitlines()
        parents = [line[7:].decode() for line in header if line.startswith(b"parent ")]
        return parents[0] if len(parents) == 1 else None

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

    def walk(
        self, after: str | None = None, max_size: int | None = None
    ) -> Iterator[tuple[str, bytes | Unread | None]]:
        """Yield (commit id, raw message) oldest first, after commit `after`.

        git itself lists the commits (rev-list) and inflates the blobs
        (cat-file, bot/store/gitread.py), so that work runs on another core
        while we parse. public-inbox records deletions as commits without
        `m`; those yield None so the caller can still move its position past
        them. A message over `max_size` bytes (or an `m` that is not a file)
        is not read: it yields an Unread saying why. A git failure raises
        ArchiveError: nothing after it is read, or taken for a deletion.
        """
        yield from gitread.messages(self.path, self._revs(after), max_size, self._is_deletion)

    def message_commits(self, max_size: int | None = None) -> list[str]:
        """Every commit holding a message to index, oldest first.

        Deletions are left out, and so are messages `walk(max_size=...)`
        would not read. Raises ArchiveError when git cannot read the archive.
        """
        return [
            commit
            for commit, info in gitread.infos(self.path, self._revs(None), self._is_deletion)
            if info is not None and gitread.unread(self.path, commit, info, max_size) is None
        ]

    def refusals(self) -> list[str]:
        """Epochs left out (bot/store/inbox.py); one epoch never refuses itself."""
        return []

    def roots(self) -> list[str]:
        """The commits the history starts from (one, for a public-inbox epoch)."""
        head = self.head()
        if head is None:
            return []
        return self._git("rev-list", "--max-parents=0", head).decode().split()

    def _revs(self, after: str | None) -> list[bytes]:
        head = self.head()
        if head is None:
            return []
        return self._git(
            "rev-list", "--reverse", "--topo-order", head, *([f"^{after}"] if after else [])
        ).split()

    def _is_deletion(self, commit_id: str) -> bool:
        """True when the commit and its tree are readable and hold no `m`."""
        try:
            return "m" not in self.repo[commit_id].peel(pygit2.Commit).tree
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def _git(self, *args: str) -> bytes:
        result = subprocess.run(
            ["git", "-C", str(self.path), *args], capture_output=True, env=git_env(), check=False
        )
        if result.returncode != 0:
            said = result.stderr.decode(errors="replace").strip()
            lines = said.splitlines()
            raise ArchiveError(
                ownership(self.path, said)
                or f"git {args[0]} failed in {self.path} ({lines[-1] if lines else 'no message'}); "
                f"run `git -C {self.path} fsck` to see whether the archive is damaged"
            )
        return result.stdout

    def count(self, after: str | None = None) -> int:
        """How many commits `walk(after)` would yield."""
        head = self.head()
        if head is None:
            return 0
        walker = self.repo.walk(head, pygit2.GIT_SORT_NONE)
        if after:
            walker.hide(after)
        return sum(1 for _ in walker)

    def append(self, messages: Iterable[tuple[bytes, ParsedMessage]]) -> list[str]:
        """Append messages as commits and wait until they are on disk."""
        pending = self.start_append(list(messages))
        pending.wait()
        return pending.ids

    def start_append(self, batch: list[tuple[bytes, ParsedMessage]]) -> PendingAppend:
        """Start appending messages as commits; `wait()` on the result.

        The objects are written and flushed to disk first, then the branch
        moves: a crash leaves either the old head or the new head, never a
        head that points at a missing object. Large batches (an import) go
        through one `git fast-import`, as public-inbox does: it packs them on
        the other core while the caller indexes them and parses the next
        batch, and its commit ids are computed here, so nobody waits for them.
        Small batches (live mail) are written in-process with libgit2.
        """
        if not self.writable:
            raise DigestError(
                f"the archive at {self.path} is a read-only mirror; new mail "
                "reaches it through `git fetch`, not through kvm-digest"
            )
        head = self.head()
        if len(batch) >= FAST_IMPORT_BATCH:
            if self.bulk_writer is not None:
                return self.bulk_writer.append(head, batch)
            writer = FastImport(self.path)
            return _Alone(writer, writer.append(head, batch))
        try:
            return PendingAppend(self._write(head, batch))
        except (pygit2.GitError, OSError) as err:
            fix = (
                advice(err.errno, err.filename or self.path)
                if isinstance(err, OSError)
                else from_git(str(err), self.path)
            )
            raise DigestError(
                f"cannot write to the archive {self.path} ({err}); {fix} (nothing was "
                "lost: the head did not move)"
            ) from err

    def _write(self, head: str | None, batch: list[tuple[bytes, ParsedMessage]]) -> list[str]:
        """Write commits in-process with libgit2; move the branch last."""
        parents = [pygit2.Oid(hex=head)] if head else []
        ids: list[str] = []
        blob_mode = pygit2.enums.FileMode.BLOB
        for raw, parsed in batch:
            blob = self.repo.create_blob(raw)
            builder = self.repo.TreeBuilder()
            builder.insert("m", blob, blob_mode)
            tree = builder.write()
            sig = _signature(parsed)
            commit = self.repo.create_commit(
                None, sig, sig, _message(parsed).decode(), tree, parents
            )
            parents = [commit]
            ids.append(str(commit))
        if ids:
            os.sync()
            self.repo.references.create(BRANCH, parents[0], force=True)
        return ids


class PendingAppend:
    """Commits being written; `ids` are known before they are on disk."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def wait(self) -> None:
        """Return once the commits and the branch are on disk; raise if not."""


class FastImport:
    """One `git fast-import` for the batches of one import, each ending in a checkpoint.

    One process, not one a batch: git then starts once, keeps the branch
    in memory, and packs each batch while the caller indexes it and parses
    the next. After a batch's `checkpoint` git has written its pack and
    moved the branch, and says so with the `progress` line that follows it.
    """

    def __init__(self, path: Path, donors: Donors | None = None) -> None:
        self.path = path
        self.donors = donors
        self.batches = 0
        self.failure: DigestError | None = None
        self.unsent: BaseException | None = None
        """What stopped the feeder thread from sending a batch, for reached() to raise."""
        # git's complaint, read when it fails. In memory, not in a pipe that
        # nobody drains during a long import, and not in the service's /tmp.
        self.errors = open(os.memfd_create("git-fast-import"), "w+b")  # noqa: SIM115
        # The pack and the ref are fsynced at each checkpoint (_GIT_WRITE),
        # without deltas: a delta search for every blob is CPU for little.
        self.proc = subprocess.Popen(
            ["git", "-C", str(path), *_GIT_WRITE, "fast-import", "--quiet", "--done", "--depth=0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            env=_padded_heap(git_env()),
        )
        self.feeder: threading.Thread | None = None

    def append(self, head: str | None, batch: list[tuple[bytes, ParsedMessage]]) -> PendingAppend:
        """Send a batch to git (from a thread: the caller goes on at once)."""
        if self.failure is not None:
            raise self.failure
        if self.feeder is not None:
            self.feeder.join()  # the batch before is sent whole before this one
        self.batches += 1
        commits = []
        ids = []
        parent = head
        for raw, parsed in batch:
            blob = _blob_id(raw)
            ident = _ident(parsed)
            message = _message(parsed)
            commits.append((raw, blob, ident, message))
            parent = _commit_id(blob, parent, ident, message)
            ids.append(parent)
        self.feeder = threading.Thread(
            target=self._send, args=(head, commits, self.batches), daemon=True
        )
        self.feeder.start()
        return _Checkpoint(self, ids, self.batches)

    def _send(self, head: str | None, commits: list[_Commit], batch: int) -> None:
        """Copy what the donors hold, then write the batch's stream (in the feeder thread)."""
        assert self.proc.stdin is not None
        try:
            copied = self.donors.copy([c[1] for c in commits], self.path) if self.donors else set()
            _feed(self.proc.stdin, _stream(head, commits, batch, copied))
        except BaseException as err:  # raised by reached(), in the caller's thread
            self.unsent = err
            # git is told the stream ended, so that it exits and nothing
            # waits for a progress line that cannot come.
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def reached(self, batch: int, ids: list[str]) -> None:
        """Return once git has checkpointed `batch`; raise if it cannot."""
        if self.failure is not None:
            raise self.failure
        assert self.proc.stdout is not None and self.feeder is not None
        self.feeder.join()
        if self.unsent is not None:
            err = self.unsent
            self._end()
            self.failure = DigestError(
                f"cannot write to the archive {self.path}: a batch could not be sent to git "
                f"fast-import ({type(err).__name__}: {err}); nothing was lost: the head did "
                "not move"
            )
            raise self.failure from err
        if self.proc.stdout.readline() != b"progress %d\n" % batch:
            self.failure = self._failed()
            raise self.failure
        head = Archive.open(self.path).head()
        if head != ids[-1]:
            self.failure = DigestError(
                f"the archive's head is {head}, not the expected {ids[-1]}; "
                "run `git fsck` on it and `kvm-digest reindex`"
            )
            raise self.failure

    def _failed(self) -> DigestError:
        self._end()  # all git had to say is written once it has exited
        self.errors.seek(0)
        error = self.errors.read().decode(errors="replace").strip()
        self.errors.close()
        said = error.splitlines()[-1] if error else f"exit status {self.proc.returncode}"
        return DigestError(
            f"cannot write to the archive {self.path} (git fast-import: {said}); "
            f"{from_git(error, self.path)} (nothing was lost: the head did not move)"
        )

    def close(self) -> None:
        """End the stream; git exits once what it was sent is written."""
        self._end()
        self.errors.close()

    def _end(self) -> None:
        if self.feeder is not None:
            self.feeder.join()
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"done\n")
            self.proc.stdin.close()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Donors:
    """The repositories an import reads from, whose blobs the archive takes as they are.

    A message imported from a public-inbox epoch is, byte for byte, a blob
    there, with the same id. git fast-import would compress it again, which
    was most of git's CPU in an import, beside the parsing on the same two
    cores. `git pack-objects` copies it instead, as the donor stored it,
    into a pack of the archive's own (a delta whose base is not in the
    same batch is written whole, at level 1): 0.6 s of CPU for the kvmarm
    epoch's blobs, against 2.9 s for fast-import to pack them.
    Each batch's copy is written and fsynced before fast-import is told of
    the commits that name it, so at every checkpoint the archive holds
    every object of its history and needs nothing of the donor afterwards.
    A copy that fails (a full disk, say) is logged and its blobs are sent
    to fast-import as before, which then says what is wrong, as always.
    """

    def __init__(self, repos: list[tuple[str, pygit2.Odb]]) -> None:
        self.repos = repos
        """(objects directory, its object database) of each donor."""

    @classmethod
    def open(cls, paths: Sequence[Path]) -> Donors | None:
        """The donors that can be read (a copy is only ever a shortcut); None if none."""
        repos = []
        for path in paths:
            try:
                repo = pygit2.Repository(str(path))
            except pygit2.GitError:
                continue  # the source itself says what it cannot read
            objects = os.path.join(repo.path, "objects")
            # git reads the variable as a list split at ':'; such a path is left out.
            if not any(c in objects for c in ':"\n'):
                repos.append((objects, repo.odb))
        return cls(repos) if repos else None

    def copy(self, blobs: list[bytes], archive: Path) -> set[bytes]:
        """Copy the `blobs` (binary ids) a donor holds into `archive`; the ids copied.

        After a copy fails, none is tried again in this import: one warning,
        not one a batch.
        """
        copied: set[bytes] = set()
        wanted = set(blobs)
        for objects, odb in self.repos:
            try:
                found = [blob for blob in wanted if odb.exists(pygit2.Oid(raw=blob))]
            except pygit2.GitError as err:  # a damaged index, say: its source will say so
                log.warning("could not look into %s (%s); not copying from it", objects, err)
                self.repos = [r for r in self.repos if r[0] != objects]
                continue
            if not found:
                continue
            if not _pack_objects(archive, objects, found):
                self.repos = []
                break
            copied.update(found)
            wanted.difference_update(found)
        return copied


def _pack_objects(archive: Path, donor: str, blobs: list[bytes]) -> bool:
    """Pack `blobs` of the `donor` objects directory into the archive; False if git could not.

    git runs in the archive and reads the donor as an alternate for this one
    command (no alternates file is written), so its temporary files are the
    archive's and the donor is never written to: it may be read-only, or
    on another filesystem.
    """
    try:
        result = subprocess.run(
            [
                "git",
                "-C",
                str(archive),
                *_GIT_WRITE,
                "pack-objects",
                "--quiet",
                "--window=0",
                "--delta-base-offset",
                str(archive.resolve() / "objects" / "pack" / "pack"),
            ],
            input=b"".join(blob.hex().encode() + b"\n" for blob in blobs),
            capture_output=True,
            env=git_env(GIT_ALTERNATE_OBJECT_DIRECTORIES=donor),
            check=False,
        )
    except OSError as err:  # git could not even start (out of memory, of processes)
        said = [str(err)]
    else:
        if result.returncode == 0:
            return True
        said = result.stderr.decode(errors="replace").strip().splitlines()
        said = said or [f"exit status {result.returncode}"]
    log.warning(
        "could not copy %d messages from %s into the archive as they are stored (git "
        "pack-objects: %s); git fast-import packs them instead",
        len(blobs),
        donor,
        said[-1],
    )
    return False


class _Checkpoint(PendingAppend):
    """A batch sent to a FastImport; on disk once git has checkpointed it."""

    def __init__(self, writer: FastImport, ids: list[str], batch: int) -> None:
        super().__init__(ids)
        self.writer = writer
        self.batch = batch

    def wait(self) -> None:
        self.writer.reached(self.batch, self.ids)


class _Alone(PendingAppend):
    """The one batch of a FastImport of its own, which ends with it."""

    def __init__(self, writer: FastImport, pending: PendingAppend) -> None:
        super().__init__(pending.ids)
        self.writer = writer
        self.pending = pending

    def wait(self) -> None:
        try:
            self.pending.wait()
        finally:
            self.writer.close()


def _is_oid(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


_GIT_WRITE = (
    "-c",
    "core.fsync=committed",
    "-c",
    "core.fsyncMethod=fsync",
    "-c",
    "pack.compression=1",
)
"""How git writes packs here: fsynced, as os.sync() does for the in-process
path, and compressed at zlib level 1 (packs a third larger, for less than
half of fast-import's CPU; `git gc` packs them as tightly as ever)."""


def _padded_heap(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with glibc told to grow and trim the heap 16 MB at a time.

    git fast-import frees the top of its heap and takes it back for every
    object: two brk calls each, which cost 1.5 s of system time in 15,000
    commits of copied blobs, and 0.1 s with them. A tunable the user set
    comes after ours, and wins. Other C libraries ignore it.
    """
    tunables = [env["GLIBC_TUNABLES"]] if env.get("GLIBC_TUNABLES") else []
    return {**env, "GLIBC_TUNABLES": ":".join(["glibc.malloc.top_pad=16777216", *tunables])}


def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write all of `data` to a child's stdin (run in a thread).

    A git that died stops reading: its reader finds out and says why.
    """
    with contextlib.suppress(BrokenPipeError, ValueError):
        pipe.write(data)
        pipe.flush()


FAST_IMPORT_BATCH = 64
"""Batches at least this large go through git fast-import."""


def _identity(parsed: ParsedMessage) -> tuple[str, str, int, int]:
    """Author name, address, time and offset from the message, as public-inbox."""
    name = _SIG_CRUD.sub(" ", parsed.from_name).strip(_SIG_TRIM)
    addr = _SIG_CRUD.sub("", parsed.from_addr).strip(_SIG_TRIM)
    when = parsed.date if parsed.date is not None else parsed.received
    if when is None or not 0 <= when < 2**37:
        when = 0
    return name or addr or "unknown", addr or "unknown", when, parsed.date_offset


def _tz(offset_minutes: int) -> str:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{sign}{hours:02d}{minutes:02d}"


def _signature(parsed: ParsedMessage) -> pygit2.Signature:
    name, addr, when, offset = _identity(parsed)
    return pygit2.Signature(name, addr, when, offset)


def _ident(parsed: ParsedMessage) -> bytes:
    name, addr, when, offset = _identity(parsed)
    return f"{name} <{addr}> {when} {_tz(offset)}".encode()


def _message(parsed: ParsedMessage) -> bytes:
    """The commit message: the subject, as public-inbox writes it."""
    return (parsed.subject.full or "(no subject)").encode("utf-8", "replace") + b"\n"


_Commit = tuple[bytes, bytes, bytes, bytes]
"""A message on its way to fast-import: raw bytes, blob id (binary), ident, commit message."""


def _stream(head: str | None, commits: list[_Commit], batch: int, copied: set[bytes]) -> bytes:
    """fast-import's commands for a batch, ending in a checkpoint and a progress line.

    A blob in `copied` is in the archive already and is named by its id;
    any other is sent. The pieces are joined once: each message's bytes
    are copied once, not once a formatting and again as a buffer grows.
    """
    parts = [b"feature done\n" if batch == 1 else b""]
    for i, (raw, blob, ident, message) in enumerate(commits):
        if blob in copied:
            ref = blob.hex().encode()
        else:
            ref = b":%d" % (i + 1)
            parts += (b"blob\nmark %s\ndata %d\n" % (ref, len(raw)), raw, b"\n")
        parts.append(
            b"commit %s\nauthor %s\ncommitter %s\ndata %d\n%s"
            % (BRANCH.encode(), ident, ident, len(message), message)
        )
        if i == 0 and head:
            parts.append(b"from %s\n" % head.encode())
        parts.append(b"deleteall\nM 100644 %s m\n\n" % ref)
    parts.append(b"checkpoint\nprogress %d\n" % batch)
    return b"".join(parts)


def _blob_id(raw: bytes) -> bytes:
    """The id git gives a blob of `raw` (binary), computed here."""
    digest = hashlib.sha1(b"blob %d\0" % len(raw))
    digest.update(raw)
    return digest.digest()


def _commit_id(blob: bytes, parent: str | None, ident: bytes, message: bytes) -> str:
    """The id git gives a commit of a one-file tree {m: blob}, computed here."""
    tree_body = b"100644 m\0" + blob
    tree = hashlib.sha1(b"tree %d\0%s" % (len(tree_body), tree_body)).hexdigest()
    body = b"tree %s\n" % tree.encode()
    if parent:
        body += b"parent %s\n" % parent.encode()
    body += b"author %s\ncommitter %s\n\n%s" % (ident, ident, message)
    return hashlib.sha1(b"commit %d\0%s" % (len(body), body)).hexdigest()


class WriterLock:
    """One writer per data directory: the importer, the listener or the daemon.

    An exclusive flock on `<data-dir>/lock`, released by the kernel when the
    process dies, so a crash never leaves a held lock behind. The holder
    removes the file when it is done, so a data dir at rest holds no lock
    file; a process that locked a file which was removed meanwhile (its
    holder finishing) sees that the path now names another file, and starts
    over on the new one.

    The file names the holder (pid and command): a command refused because
    the daemon holds the lock says "stop the service first", since waiting
    would never end.
    """

    def __init__(self, data_dir: Path, command: str = "") -> None:
        self.path = data_dir / "lock"
        self.command = command
        """The kvm-digest command taking the lock (`run`, `import`...), for the holder's file."""
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, _, holder = os.pread(fd, 64, 0).decode(errors="replace").strip().partition(" ")
                os.close(fd)
                raise DigestError(self._busy(pid or "?", holder)) from None
            try:
                same = os.path.samestat(os.stat(self.path), os.fstat(fd))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed by the previous holder in between: retry
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.command}".strip().encode() + b"\n", 0)
        self._fd = fd
        return self

    def _busy(self, pid: str, holder: str) -> str:
        """Why we cannot have the lock, and what to do about it."""
        where = self.path.parent
        needs = f"`kvm-digest {self.command}`" if self.command else "this command"
        if holder in ("run", "listen"):
            # A long-running holder: waiting would never end.
            what = "the daemon" if holder == "run" else "the IMAP listener"
            return (
                f"{what} (`kvm-digest {holder}`, pid {pid}) holds the writer lock of "
                f"{where}, and {needs} needs it: stop the service first (`systemctl stop "
                "kvm-digest`, or stop that process), run the command, then start it again"
            )
        running = f"`kvm-digest {holder}`, pid {pid}" if holder else f"pid {pid}"
        return (
            f"another kvm-digest process ({running}) is writing to {where}, and {needs} "
            "needs the writer lock: wait for it to finish (or stop it), then run the "
            "command again"
        )

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            # Removed while still held, so nobody can lock the old file after us.
            # A read-only data dir cannot lose it: that is harmless, the next
            # writer locks the same file.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
