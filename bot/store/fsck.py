"""`kvm-digest fsck`: is the archive sound, and do the archive and the index agree?

The archive is the truth: git itself checks it (`git fsck`, every epoch),
since a damaged pack would otherwise only show as messages missing from the
digests. The index must hold each message commit exactly once, in archive
order, and nothing else, and must know the archive's head. The outbox must
not have sent any digest twice to the same subscriber. Any disagreement is
reported in plain words; `kvm-digest reindex` repairs the index side. (A
damaged index file is found before any of this: bot/store/damage.py.)
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import ArchiveError
from bot.store.archive import Archive
from bot.store.gitenv import git_env
from bot.store.inbox import Inbox
from bot.store.index import Index


@dataclass
class Report:
    messages: int = 0
    problems: list[str] = field(default_factory=list)
    archive_damaged: bool = False
    """The archive itself is damaged: reindexing cannot help, restoring it does."""
    behind: int = 0
    """Messages after the index's last commit, not indexed yet: no damage.

    A restored backup, or a daemon still catching up, is behind the archive;
    the daemon or any command that reads the archive indexes the rest.
    """

    @property
    def ok(self) -> bool:
        return not self.problems


def check(archive: Archive | Inbox, index: Index, max_size: int) -> Report:
    """Every problem found, in plain words (never an exception for damage)."""
    report = Report()
    for repo in archive.epochs if isinstance(archive, Inbox) else [archive]:
        said = git_fsck(repo.path)
        if said:
            report.problems.append(f"git fsck finds {repo.path} damaged: {said}")
            report.archive_damaged = True
    try:
        commits = archive.message_commits(None if archive.writable else max_size)
    except ArchiveError as err:
        report.problems.append(str(err))
        report.archive_damaged = True
        return report
    report.problems += archive.refusals()
    report.messages = len(commits)
    rows = [r[0] for r in index.conn.execute("SELECT commit_id FROM messages ORDER BY seq")]
    doubled = [c for c, n in Counter(rows).items() if n > 1]
    if doubled:
        report.problems.append(
            f"{len(doubled)} commits are indexed more than once, e.g. {doubled[0]}"
        )
    archived, indexed = set(commits), set(rows)
    missing = [c for c in commits if c not in indexed]
    last = index.last_commit()
    if missing and last in archived and missing == commits[commits.index(last) + 1 :]:
        report.behind, missing = len(missing), []
    extra = [r for r in rows if r not in archived]
    if missing:
        report.problems.append(
            f"{len(missing)} archived messages are not in the index, e.g. {missing[0]}"
        )
    if extra:
        report.problems.append(
            f"{len(extra)} index rows name commits the archive does not have, e.g. {extra[0]}"
        )
    if not missing and not extra and not doubled and rows != commits[: len(rows)]:
        report.problems.append("the index holds the archive's messages in another order")
    head = archive.head()
    if head != last and not missing and not report.behind:
        report.problems.append(f"the index last saw {last}, the archive's head is {head}")
    twice = index.conn.execute(
        "SELECT digest_id, recipient, COUNT(*) FROM outbox WHERE kind = 'digest'"
        " AND status = 'sent' GROUP BY digest_id, recipient HAVING COUNT(*) > 1"
    ).fetchall()
    if twice:
        report.problems.append(
            f"{len(twice)} digests were sent twice to the same "
            f"subscriber, e.g. digest {twice[0][0]} to {twice[0][1]}"
        )
    return report


def git_fsck(repo: Path) -> str:
    """git's own check of one repository: '' when sound, else its first findings."""
    result = subprocess.run(
        ["git", "-C", str(repo), "fsck", "--no-dangling", "--no-progress", "--no-reflogs"],
        capture_output=True,
        text=True,
        errors="replace",
        env=git_env(),
        check=False,
    )
    if result.returncode == 0:
        return ""
    lines = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line]
    return "; ".join(lines[:3]) or f"exit status {result.returncode}"
