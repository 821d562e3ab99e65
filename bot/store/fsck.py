"""`kvm-digest fsck`: do the archive and the index agree?

The archive is the truth; the index must hold each message commit exactly
once, in archive order, and nothing else, and must know the archive's head.
The outbox must not have sent any digest twice to the same subscriber. Any
disagreement is reported in plain words; `kvm-digest reindex` repairs the
index side.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bot.store.archive import Archive
from bot.store.index import Index


@dataclass
class Report:
    messages: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(archive: Archive, index: Index) -> Report:
    commits = archive.message_commits()
    rows = [r[0] for r in index.conn.execute("SELECT commit_id FROM messages ORDER BY seq")]
    report = Report(messages=len(commits))
    doubled = [c for c, n in Counter(rows).items() if n > 1]
    if doubled:
        report.problems.append(
            f"{len(doubled)} commits are indexed more than once, e.g. {doubled[0]}"
        )
    archived, indexed = set(commits), set(rows)
    missing = [c for c in commits if c not in indexed]
    extra = [r for r in rows if r not in archived]
    if missing:
        report.problems.append(
            f"{len(missing)} archived messages are not in the index, e.g. {missing[0]}"
        )
    if extra:
        report.problems.append(
            f"{len(extra)} index rows name commits the archive does not have, e.g. {extra[0]}"
        )
    if not missing and not extra and not doubled and rows != commits:
        report.problems.append("the index holds the archive's messages in another order")
    head = archive.head()
    last = index.last_commit()
    if head != last and not missing:
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
