"""A whole public-inbox v2 inbox, read-only: every epoch `git/N.git`, in order.

lore starts a new epoch (a new git repository with its own root commit) every
gigabyte or so, so a mirror of a busy list is a directory of epochs, not one
repository. This presents them to the index as one archive, the way
public-inbox does: messages in epoch order, then commit order; a position is
a commit id, which names its epoch; the head is the newest epoch's head.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.errors import DigestError
from bot.store.archive import Archive
from bot.store.gitread import Unread

_EPOCH = re.compile(r"(\d+)\.git")


def epoch_paths(inbox: Path) -> list[Path]:
    """The epochs of a v2 inbox directory, oldest first (`git/0.git`, ...)."""
    git = inbox / "git"
    if not git.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in git.iterdir() if (m := _EPOCH.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


@dataclass(frozen=True)
class Partial:
    """How a mirror falls short of the inbox's whole history (follow_since)."""

    skipped: int
    """Epochs 0..skipped-1 were never fetched: they end before the since day."""
    shallow: tuple[int, ...]
    """Epochs cloned with a shallow boundary (their oldest commits' parents are absent)."""

    def describe(self, oldest: str | None) -> str:
        """One sentence for fsck and health; `oldest` is the first message's day."""
        parts = []
        if self.skipped:
            parts.append(
                "epoch 0 was not fetched"
                if self.skipped == 1
                else f"epochs 0-{self.skipped - 1} were not fetched"
            )
        if self.shallow:
            parts.append("epoch " + ", ".join(map(str, self.shallow)) + " is shallow")
        start = f"from {oldest} on" if oldest else "from the since day on"
        return (
            f"the mirror is partial ({' and '.join(parts)}, as [archive] follow_since or "
            f"fetch --since asked): it holds the list {start}, and digests of earlier "
            "ranges cannot be made"
        )


def partial(path: Path) -> Partial | None:
    """What a v2 mirror lacks of its inbox's history, or None when it is whole."""
    epochs = epoch_paths(path)
    if not epochs:
        return None
    first = int(_EPOCH.fullmatch(epochs[0].name).group(1))  # type: ignore[union-attr]
    shallow = tuple(
        int(_EPOCH.fullmatch(e.name).group(1))  # type: ignore[union-attr]
        for e in epochs
        if (e / "shallow").exists()
    )
    if not first and not shallow:
        return None
    return Partial(first, shallow)


def is_inbox(path: Path) -> bool:
    """True for a v2 inbox directory (it has `git/N.git` epochs)."""
    return bool(epoch_paths(path))


def open_mirror(path: Path) -> Archive | Inbox:
    """A mirror to index in place: one epoch or a whole v2 inbox directory."""
    if is_inbox(path):
        return Inbox(path)
    return Archive.open(path)


class Inbox:
    """Several epochs read as one archive (the part of Archive the index uses).

    Each epoch of a v2 inbox is a history of its own. One that repeats an
    earlier epoch's history (the same root commit: a server that answers
    every epoch number with the same repository, or a copy made by hand)
    would index those messages twice; it is left out, and says so
    in one sentence per epoch (`refusals`), while the other epochs are read as usual.
    """

    writable = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.epochs = [Archive.open(p) for p in epoch_paths(path)]
        if not self.epochs:
            raise DigestError(
                f"{path} holds no epochs (git/0.git, git/1.git, ...); point [archive] "
                "path at a public-inbox v2 inbox directory or at one epoch"
            )
        self._roots: dict[int, set[str]] = {}
        self._refused: dict[int, str] = {}

    def base(self) -> str | None:
        """The commit before the oldest one held (a shallow first epoch), or None."""
        return self.epochs[0].base()

    def head(self) -> str | None:
        """The newest message commit: the head of the last non-empty epoch."""
        for epoch in reversed(self.epochs):
            head = epoch.head()
            if head is not None:
                return head
        return None

    def _epoch_of(self, commit_id: str | None) -> int | None:
        """The position of the epoch whose history holds `commit_id`."""
        if not commit_id:
            return None
        return next((i for i, e in enumerate(self.epochs) if e.contains(commit_id)), None)

    def contains(self, commit_id: str) -> bool:
        return self._epoch_of(commit_id) is not None

    def _plan(self, after: str | None) -> list[tuple[int, str | None]]:
        """Each epoch still to read, with the commit to start after in it."""
        start = self._epoch_of(after)
        if start is None:
            return [(i, None) for i in range(len(self.epochs))]
        return [(start, after)] + [(i, None) for i in range(start + 1, len(self.epochs))]

    def refusals(self) -> list[str]:
        """One sentence for each epoch left out because it repeats an earlier one."""
        return [said for i in range(len(self.epochs)) if (said := self._repeats(i))]

    def _repeats(self, number: int) -> str:
        """Why epoch `number` is left out ('' if it is not): it shares an earlier one's history."""
        if number not in self._refused:
            self._refused[number] = ""
            mine = self._root_commits(number)
            for earlier in range(number):
                shared = mine & self._root_commits(earlier)
                if shared:
                    self._refused[number] = (
                        f"the epoch {self.epochs[number].path} repeats the history of "
                        f"{self.epochs[earlier].path} (both start at commit "
                        f"{min(shared)[:12]}), so it is left out: a v2 inbox's epochs are "
                        "separate histories; remove it, or fix the inbox it comes from"
                    )
                    break
        return self._refused[number]

    def _root_commits(self, number: int) -> set[str]:
        if number not in self._roots:
            self._roots[number] = set(self.epochs[number].roots())
        return self._roots[number]

    def walk(
        self, after: str | None = None, max_size: int | None = None
    ) -> Iterator[tuple[str, bytes | Unread | None]]:
        """Yield (commit id, raw message or None) oldest first, across epochs."""
        for number, start in self._plan(after):
            if start is None and self._repeats(number):
                continue
            yield from self.epochs[number].walk(start, max_size)

    def count(self, after: str | None = None) -> int:
        return sum(self.epochs[i].count(start) for i, start in self._plan(after))

    def message_commits(self, max_size: int | None = None) -> list[str]:
        return [
            c
            for i, epoch in enumerate(self.epochs)
            if not self._repeats(i)
            for c in epoch.message_commits(max_size)
        ]
