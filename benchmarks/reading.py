"""An independent reading of FORMAT.md, to check the digest against on real ranges.

This script reads the raw mail of a public-inbox epoch (or a bundle) and works
out, from FORMAT.md's text alone and without any of bot/'s code, what a digest
of a range must say: the statistics, the kind of every message, the patch list
(k/n, cover letter, replies), the New/Exist entries, and in the full style the
trailer counts, versions, "applied" and the discussion on earlier series. It
then asks `kvm-digest digest` for the same ranges (random day, three-day and
week windows) and reports every line on which the two disagree.

    .venv/bin/python benchmarks/reading.py ../shared/data/kvmarm-2019-2021.bundle
    .venv/bin/python benchmarks/reading.py ARCHIVE.git --ranges 200 --seed 7 -v

The exit status is 0 when every classic digest is identical. It is a reading,
not a second implementation to keep in step: where FORMAT.md leaves a choice,
the choice made here is said in a comment, and a disagreement is a question to
settle (the bot's fault, or FORMAT.md's ambiguity), not automatically a bug.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import email
import email.header
import email.policy
import email.utils
import hashlib
import random
import re
import shlex
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOT = ROOT / ".venv" / "bin" / "kvm-digest"

# -- reading one message ----------------------------------------------------

REPLY = re.compile(r"^\s*(?:re|aw|sv|antw|fwd?|vs|odp|rif|wg|tr)\s*(?:\[\d+\])?\s*:\s*", re.I)
BRACKET = re.compile(r"^\s*\[([^\[\]]*)\]\s*")
COUNTER = re.compile(r"^0*(\d+)/0*(\d+)$")
OF = re.compile(r"\b0*(\d+)\s+of\s+0*(\d+)\b", re.I)
VERSION = re.compile(r"^(?:patch|rfc|resend)?-?v(\d+)$", re.I)
DIFF = re.compile(r"^(?:diff --git |diff -\w|Index: \S)", re.M)
OLD_NEW = re.compile(r"^--- \S.*\n\+\+\+ \S", re.M)
FOOTER = re.compile(r"\n_{20,}\n[^\n]*mailing list\n(?:[^\n]*\n?){0,6}$", re.I)
NOTICE_SUBJECT = re.compile(
    r'^(?:FAILED:\s*)?patch\s+".*"\s+(?:has\s+been\s+added\s+to|failed\s+to\s+apply\s+to)\s',
    re.I,
)
NOTICE_BODY = (
    "This is a note to let you know that I've just added the patch titled",
    "The patch below does not apply to the",
)
PULL_BODY = re.compile(r"are available in the git repository at", re.I)
SHORTLOG = re.compile(r"^\S.* \(\d+\):$", re.M)
MAILBOX = re.compile(r"^\s*(?P<name>[^<>]*)<(?P<addr>[^<>@\s]+@[^<>@\s]+)>\s*$")
BARE = re.compile(r"^\s*(?P<addr>[^<>@\s(),;]+@[^<>@\s(),;]+)\s*(?:\((?P<name>[^()]*)\))?\s*$")


@dataclass
class Mail:
    """What FORMAT.md needs to know about one message."""

    pos: int
    commit: str
    mid: str
    parent: str | None
    refs: list[str]
    subject: str
    base: str
    title: str
    is_reply: bool
    tags: set[str]
    version: int
    counter: int | None
    total: int | None
    name: str
    addr: str
    author: tuple[str, str]
    when: int
    """Arrival: the list server's Received stamp, else Date (ranges go by it)."""
    date: int
    """The Date header: what "posted" and version dates print (UTC)."""
    kind: str = "other"
    text_key: str = ""
    own: list[str] = field(default_factory=list)
    change_id: str = ""
    redelivered: bool = False
    dup_of: int | None = None
    series: str | None = None


def header(msg: email.message.Message, name: str) -> str:
    """A header decoded (RFC 2047) and unfolded, white space collapsed."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        text = str(value)
    return " ".join(text.split())


def mailbox(text: str, strict: bool) -> tuple[str, str] | None:
    """(name, address) of one mailbox; strict: nothing else may be on the line."""
    for pattern in (MAILBOX, BARE):
        m = pattern.match(text)
        if m and "@" in m.group("addr"):
            return shown_name(unquote(m.group("name") or ""), m.group("addr")), m.group("addr")
    if strict:
        return None
    name, addr = email.utils.parseaddr(text)
    return (shown_name(unquote(name), addr), addr) if addr else None


def unquote(name: str) -> str:
    name = " ".join(name.split())
    while len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        name = name[1:-1].strip()
    return name


def shown_name(name: str, addr: str) -> str:
    """A display name that only repeats the address is no name (FORMAT.md is silent)."""
    return "" if name.lower() == addr.lower() else name


def texts_of(msg: email.message.Message) -> tuple[list[str], str]:
    """The text parts (plain text and attached patches) and the first one."""
    out = []
    html = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        fname = str(part.get_filename() or "")
        if ctype in ("text/plain", "text/x-patch", "text/x-diff") or re.search(
            r"\.(patch|diff)$", fname
        ):
            out.append(decode(part))
        elif ctype == "text/html":
            html.append(re.sub(r"<[^>]*>", "", decode(part)))
    if not out:
        out = html
    out = [FOOTER.sub("\n", t.replace("\r\n", "\n")) for t in out]
    return out, out[0] if out else ""


def decode(part: email.message.Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return str(part.get_payload())
    for charset in (part.get_content_charset(), "utf-8", "cp1252", "latin-1"):
        if not charset:
            continue
        try:
            return data.decode(charset)
        except (LookupError, UnicodeError):
            continue
    return data.decode("latin-1")


def read_subject(text: str) -> tuple[str, str, bool, set[str], int, int | None, int | None]:
    """(base, title, reply, tags, version, counter, total) of a subject."""
    rest, reply = text, False
    while m := REPLY.match(rest):
        rest, reply = rest[m.end() :], True
    base, tags, version, counter, total = rest, set(), 1, None, None
    while m := BRACKET.match(rest):
        rest = rest[m.end() :]
        # "[kbuild] Re: [PATCH 1/7] ...": a tag put before the reply prefix.
        while r := REPLY.match(rest):
            rest, reply = rest[r.end() :], True
        for word in re.split(r"[\s,]+", OF.sub(r"\1/\2", m.group(1))):
            if c := COUNTER.match(word):
                counter, total = int(c.group(1)), int(c.group(2)) or None
            elif v := VERSION.match(word):
                version = int(v.group(1))
                tags.update(w for w in ("patch", "rfc") if word.lower().startswith(w))
            elif word:
                tags.add(word.lower())
    return base, rest.strip(), reply, tags, version, counter, total


def inbody_from(first: str) -> str | None:
    """The value of a `From:` line at the very top of the body, if any."""
    for line in first.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^From:\s*(.*)$", line)
        return m.group(1).strip() if m else None
    return None


def own_text(text: str) -> list[str]:
    """The lines the writer wrote: not quoted, before the signature or an Outlook quote."""
    out = []
    for line in text.split("\n"):
        if line.rstrip() == "--" and False:
            break
        if line == "-- " or re.match(r"^\s*-+\s*original message\s*-+\s*$", line, re.I):
            break
        if line.lstrip().startswith(">"):
            continue
        out.append(line)
    return out


def diff_is_the_message(first: str) -> bool:
    """True when a 0/n's diff is its content (a patch numbered 0), not an embedded sketch."""
    if SHORTLOG.search(first) or re.search(r"^(?:Range-diff|Interdiff)\b.*:$", first, re.M):
        return False
    lines = first.split("\n")
    start = next((i for i, line in enumerate(lines) if DIFF.match(line)), None)
    if start is None:
        return True
    for line in lines[start:]:
        if line in ("-- ", "--"):
            return True
        if line and not re.match(
            r"^(?:[ +\-@\\]|diff |index |new |deleted |similarity |rename )", line
        ):
            return False
    return True


def read(pos: int, commit: str, raw: bytes) -> Mail:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject = header(msg, "subject")
    base, title, reply, tags, version, counter, total = read_subject(subject)
    sender = mailbox(header(msg, "from"), strict=False) or ("", "")
    mids = re.findall(r"<([^<>\s]+)>", str(msg.get("message-id", "")))
    irt = re.findall(r"<([^<>\s]+)>", str(msg.get("in-reply-to", "")))
    refs = re.findall(r"<([^<>\s]+)>", " ".join(str(v) for v in msg.get_all("references", [])))
    stamps = []
    for source in (str(msg.get("received", "")).rpartition(";")[2], str(msg.get("date", ""))):
        try:
            stamps.append(int(email.utils.parsedate_to_datetime(source.strip()).timestamp()))
        except (TypeError, ValueError, IndexError, OverflowError):
            stamps.append(None)
    when = stamps[0] or stamps[1] or 0
    date = stamps[1] or stamps[0] or 0
    texts, first = texts_of(msg)
    has_diff = not reply and any(DIFF.search(t) or OLD_NEW.search(t) for t in texts)
    mail = Mail(
        pos=pos,
        commit=commit,
        mid=mids[0] if mids else hashlib.sha1(raw).hexdigest(),
        parent=(irt or refs[-1:] or [None])[0],
        refs=refs,
        subject=subject,
        base=base,
        title=title,
        is_reply=reply,
        tags=tags,
        version=version,
        counter=counter,
        total=total,
        name=sender[0],
        addr=sender[1],
        author=sender,
        when=when,
        date=date,
    )
    # Kinds of message, in FORMAT.md's order.
    top = first.lstrip()[:600]
    if reply:
        mail.kind = "reply"
    elif NOTICE_SUBJECT.match(base) or any(top.startswith(n) for n in NOTICE_BODY):
        mail.kind = "notice"
    elif counter == 0:
        mail.kind = "patch" if has_diff and diff_is_the_message(first) else "cover"
    elif counter is not None and has_diff:
        mail.kind = "patch"
    elif "pull" in tags or PULL_BODY.search(first):
        mail.kind = "pull"
    elif has_diff:
        mail.kind = "patch"
    # The author: the in-body From of a submission, when it is one address.
    if mail.kind in ("patch", "cover", "pull"):
        value = inbody_from(first)
        if value is not None and (found := mailbox(value, strict=True)):
            mail.author = found
    if mail.kind != "reply":
        mail.text_key = hashlib.sha1(
            "\0".join("".join(t.split()) for t in texts).encode()
        ).hexdigest()
    if mail.kind == "reply":
        mail.own = own_text("\n".join(texts))
    if mail.kind in ("patch", "cover"):
        m = re.search(r"^\s*change-id:\s*(\S+)\s*$", "\n".join(texts), re.M | re.I)
        mail.change_id = m.group(1) if m else ""
    return mail


def load(archive: Path) -> list[Mail]:
    """Every message of the archive, in commit order."""
    with tempfile.TemporaryDirectory() as tmp:
        git = archive
        if archive.is_file():  # a bundle
            git = Path(tmp) / "a.git"
            subprocess.run(["git", "clone", "-q", "--bare", str(archive), str(git)], check=True)
        commits = subprocess.run(
            ["git", "-C", str(git), "rev-list", "--reverse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        cat = subprocess.Popen(
            ["git", "-C", str(git), "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        mails = []
        for pos, commit in enumerate(commits, 1):
            cat.stdin.write(f"{commit}:m\n".encode())
            cat.stdin.flush()
            size = int(cat.stdout.readline().split()[2])
            raw = cat.stdout.read(size)
            cat.stdout.read(1)
            mails.append(read(pos, commit, raw))
        cat.stdin.close()
        cat.wait()
    return mails


# -- threads, series, copies ------------------------------------------------


def key(root: str, version: int, addr: str) -> str:
    return f"{root}/v{version}/{addr.lower()}"


def assign_series(mails: list[Mail]) -> None:
    """Every patch, cover letter and reply gets the series FORMAT.md puts it in."""
    by_mid: dict[str, Mail] = {}
    content: dict[tuple, int] = {}
    seen: dict[tuple, int] = {}
    for m in mails:
        ident = (m.mid, m.subject, m.addr, m.when, m.text_key, tuple(m.own))
        if ident in seen:
            m.redelivered = True  # the archive holds this very message again
            continue
        seen[ident] = m.pos
        by_mid.setdefault(m.mid, m)
        if m.kind in ("patch", "cover", "pull"):
            copy = (m.subject, m.addr.lower(), m.text_key)
            if copy in content:
                m.dup_of = content[copy]
            else:
                content[copy] = m.pos
    pos = {m.pos: m for m in mails}
    children: dict[str, list[Mail]] = defaultdict(list)
    for m in mails:
        if m.parent and not m.redelivered:
            children[m.parent].append(m)

    def own_patches(cover: Mail) -> bool:
        """A cover letter with patches of its own version (a v2 sent in reply is then new)."""
        stack, found = [cover.mid], False
        visited = set()
        while stack and not found:
            for child in children.get(stack.pop(), []):
                if child.pos in visited:
                    continue
                visited.add(child.pos)
                if child.kind == "patch" and child.addr.lower() == cover.addr.lower():
                    if child.version == cover.version and child.dup_of is None:
                        found = True
                    stack.append(child.mid)
        return found

    def cover_id(cover: Mail) -> str:
        if cover.dup_of is not None:
            return cover_id(pos[cover.dup_of])
        # A cover letter sent twice (same sender and subject, within the hour): one series.
        twins = (
            [
                o
                for o in mails
                if o.kind == "cover"
                and not o.redelivered
                and o.addr.lower() == cover.addr.lower()
                and o.base == cover.base
                and abs(o.when - cover.when) <= 3600
            ]
            if cover.pos in twin_candidates
            else [cover]
        )
        first = min(twins, key=lambda o: (o.when, o.mid))
        return key(first.mid, cover.version, cover.addr)

    covers_by = Counter((m.addr.lower(), m.base) for m in mails if m.kind == "cover")
    twin_candidates = {
        m.pos for m in mails if m.kind == "cover" and covers_by[(m.addr.lower(), m.base)] > 1
    }

    def takes(cover: Mail, patch: Mail) -> bool:
        """Whether a patch answering this cover letter belongs to its series."""
        if cover.kind != "cover" or cover.addr.lower() != patch.addr.lower():
            return False
        total = patch.total or 1
        if patch.total is None and cover.total != 1:
            return False
        if patch.version == cover.version:
            return True
        return cover.total == total and (patch.version < cover.version or not own_patches(cover))

    def sibling_cover(patch: Mail, parent_id: str) -> Mail | None:
        for o in sorted(children.get(parent_id, []), key=lambda o: (o.when, o.mid)):
            if (
                o.kind == "cover"
                and o.addr.lower() == patch.addr.lower()
                and o.version == patch.version
                and o.total in (patch.total, None)
                and o.pos != patch.pos
            ):
                return o
        return None

    def patch_series(m: Mail) -> str:
        if m.dup_of is not None:
            return series_of(pos[m.dup_of])
        if m.kind == "cover":
            return cover_id(m)
        parent = by_mid.get(m.parent) if m.parent else None
        if m.total is None:
            if parent is not None and takes(parent, m):
                return cover_id(parent)
            return key(m.mid, m.version, m.addr)
        top = m
        for _ in range(500):
            if top.parent is None or top.parent == top.mid:
                break
            parent = by_mid.get(top.parent)
            if (
                parent is not None
                and parent.kind == "patch"
                and parent.total is not None
                and parent.total == m.total
                and parent.version == m.version
                and parent.addr.lower() == m.addr.lower()
            ):
                top = parent
                continue
            if parent is not None and parent.version == m.version and takes(parent, m):
                return cover_id(parent)
            if (sib := sibling_cover(m, top.parent)) is not None:
                return cover_id(sib)
            if parent is not None and takes(parent, m):
                return cover_id(parent)
            if parent is not None and parent.kind == "patch":
                return key(top.mid, m.version, m.addr)
            return key(top.parent, m.version, m.addr)
        # No threading at all (FORMAT.md is silent): the same sender's patches
        # of one version and total within the hour, counter not yet taken.
        if (m.total or 0) > 1:
            for o in sorted(unthreaded, key=lambda o: abs(o.when - m.when)):
                if o.pos == m.pos or abs(o.when - m.when) > 3600:
                    continue
                if (o.addr.lower(), o.version, o.total) != (m.addr.lower(), m.version, m.total):
                    continue
                sid = memo.get(o.pos)
                if sid is not None and not any(
                    p.counter == m.counter for p in members[sid] if p.pos != m.pos
                ):
                    return sid
        return key(top.mid, m.version, m.addr)

    memo: dict[int, str] = {}
    members: dict[str, list[Mail]] = defaultdict(list)
    unthreaded = [m for m in mails if m.kind in ("patch", "cover") and m.parent is None]

    def series_of(m: Mail) -> str:
        if m.pos not in memo:
            memo[m.pos] = patch_series(m)
        return memo[m.pos]

    for m in mails:
        if m.kind in ("patch", "cover") and not m.redelivered:
            m.series = series_of(m)
            members[m.series].append(m)
    for m in mails:
        if m.kind != "reply" or m.redelivered:
            continue
        for ref in [m.parent, *reversed(m.refs)]:
            anc = by_mid.get(ref) if ref else None
            if anc is not None and anc.series:
                m.series = anc.series
                break
            if anc is not None and anc.kind == "reply" and anc.series:
                m.series = anc.series
                break
        if m.series is None and not m.refs and not m.parent:
            for o in reversed(mails[: m.pos - 1]):
                if o.kind in ("patch", "cover") and o.base == m.base and o.series:
                    m.series = o.series
                    break


# -- "applied", read here as a person would ---------------------------------

PATCHWORK = re.compile(
    r"^This (?:series|patch|pull request) was applied to (?P<where>\S+(?: \([^()]*\))?)"
    r"(?: by (?P<name>[^<>:]+?)(?: <[^<>]+>)?)?:$"
)
# A clause that says the patches were taken, the way maintainers write it:
# no subject or the writer's own, or the patches in the passive; then what
# was taken, where to, and remarks ("with ...", "minus ...", "for 5.12").
# Read clause by clause ("Fixed the typo and applied to hyperv-next").
TAKEN = re.compile(
    r"^(?:(?:thanks|thank you|ok|okay|now|so|anyway|for now|and)[,!.]?\s+)?"
    r"(?:(?:i|we)(?:'ve| have)?\s+(?:now\s+|also\s+|just\s+|provisionally\s+)*)?"
    r"(?:(?:this|it|they|the series|this series|the patch|patch(?:es)? [\d\-, and]+|both(?: \w+)?"
    r"|all|(?:these|the|this|both) (?:(?!following|below|above|attached)\w+ )?"
    r"(?:patch(?:es)?|series|set|backports?|fix(?:es)?)"
    r"|patch|fix|series)(?: of (?:this|the) series)?"
    r"\s+(?:is |are |has been |have been )?(?:now )?)?"
    r"(?P<verb>applied|queued|pushed)(?: up| out)?"
    r"(?:\s+(?:it|this|this one|them|the series|this series|this set|the patch|both|all"
    r"|the first patch only|(?:these|the|this|both) (?:(?!following|below|above|attached)\w+ )?"
    r"(?:patch(?:es)?|series|set)"
    r"|patch(?:es)? [\d\-, and]+|[\d\-]+(?: and [\d\-]+)*)(?: up| out)?)?"
    r"(?:\s+(?:manually|provisionally|already|everywhere else))?"
    r"(?:\s+(?:to|into|in)\s+(?:my |the |our )?(?P<where>[\w./+:-]+(?: \([^()\s]*\))?)"
    r"(?: branch| tree)?)?"
    r"(?:\s+(?:for|with|minus|along with|on top of|as|apart from|except|in order)\s+.*"
    r"|\s+\(.*\))?"
    r"(?:\s*(?:thanks|thank you)(?: \w+)?)?[.!]*$",
    re.I,
)
NOT_TAKEN = re.compile(
    r"\b(?:if|once|when|will|would|should|could|can|may|might|not|never|yet|locally|cleanly|"
    r"boots?|tested|crash\w*|able to)\b|n't\b|'ll\b|on top of (?:v?\d|rc)|\bon v?\d",
    re.I,
)


def applied_note(own: list[str]) -> tuple[str, str] | None:
    """(name given, where) when the writer's own text says the patches were taken."""
    paras, cur = [], []
    for line in [*own, ""]:
        if line.strip() and not line.rstrip().endswith("wrote:"):
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    for para in paras:
        if m := PATCHWORK.match(para):
            return (m.group("name") or "").strip(), m.group("where")
    for para in paras:
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            if sentence.endswith("?"):
                continue
            # Clauses: at commas, semicolons, colons and "and", not inside brackets.
            plain = re.sub(
                r"\([^()]*\)",
                lambda p: re.sub(r"[,:;]|\band\b", " ", p.group(0)),
                sentence.strip(),
            )
            clauses = re.split(r",\s+|;\s+|:\s+|\s+and\s+(?!\d)", plain)
            for i, clause in enumerate(clauses):
                before = ", ".join(clauses[: i + 1])
                if NOT_TAKEN.search(before):
                    break  # a condition, a plan or a test report before the verb
                if m := TAKEN.match(clause.strip()):
                    # Where to: this clause's, else a later one's ("applied and pushed to -next").
                    found = [m] + [TAKEN.match(c.strip()) for c in clauses[i + 1 :]]
                    where = next((f.group("where") for f in found if f and f.group("where")), "")
                    where = where.rstrip(".")
                    if where.lower() in ("tree", "branch", "queue", "git", "patch", "series"):
                        where = ""
                    return "", where
    return None


TRAILER = re.compile(r"^(Reviewed|Acked|Tested)-by:\s*(.+)$", re.I)


# -- one digest, as FORMAT.md describes it ------------------------------------


def person(name: str, addr: str) -> str:
    return f"{name} <{addr}>" if name else addr


@dataclass
class Expected:
    stats: list[str]
    patch_list: list[str]
    entries: list[str]
    facts: dict[str, str]
    discussion: list[str]
    series_of: dict[str, list[Mail]] = field(default_factory=dict)
    """Each item's replies up to the end of the range (for explaining a disagreement)."""


def expected(mails: list[Mail], start: int, end: int) -> Expected:
    """What the digest of (start, end] (archive positions) must say."""
    rng = [m for m in mails[start:end] if not m.redelivered]
    people: Counter[str] = Counter()
    shown: dict[str, str] = {}
    domains: Counter[str] = Counter()
    for m in rng:
        name, addr = m.author
        if "@" not in addr:
            continue
        people[addr.lower()] += 1
        shown[addr.lower()] = person(name, addr)
        domains[addr.lower().rpartition("@")[2]] += 1

    def ranked(counts: Counter[str], text: dict[str, str], sep: str) -> list[str]:
        order = sorted(counts, key=lambda k: (-counts[k], text[k].casefold(), text[k]))
        return [f"{counts[k]:7d}{sep}{text[k]}" for k in order[:15]]

    stats = [*ranked(domains, {d: d for d in domains}, " "), "--", *ranked(people, shown, "  ")]
    # The patch list: one line per series with a patch or cover letter in range.
    groups: dict[str, list[Mail]] = {}
    replies: Counter[str] = Counter()
    for m in rng:
        if m.kind in ("patch", "cover") and m.series:
            groups.setdefault(m.series, []).append(m)
        elif m.kind == "reply" and m.series:
            replies[m.series] += 1
    lines, facts_of, listed = [], {}, []
    for sid, members in groups.items():
        new = [m for m in members if m.dup_of is None]
        if not new:
            continue
        covers = [m for m in new if m.counter == 0] or [m for m in members if m.counter == 0]
        patches = [m for m in new if m.counter != 0]
        show = covers[0] if covers else min(patches, key=lambda m: (m.counter or 1, m.pos))
        n = max(m.total or 1 for m in members)
        k = min(len({m.counter or 1 for m in patches}), n)
        text = f"{k}/{n} patches" + (", cover letter" if covers else "")
        if replies[sid]:
            text += f", {count_replies(replies[sid])}"
        item = f"{show.subject} | {person(show.name, show.addr)}, {text}"
        lines.append(item)
        listed.append(sid)
        facts_of[item] = facts(mails, sid, show, end, versions_too=True)
    # Entries.
    entries = []
    for m in rng:
        if m.kind == "reply" or not (
            m.kind in ("cover", "pull") or (m.kind == "patch" and m.counter in (None, 0, 1))
        ):
            continue
        if m.dup_of is not None:
            entries.append(f"Exist: {m.subject}")
            continue
        author = person(*m.author)
        if m.author[1].lower() != m.addr.lower():
            author += f" (sent by {person(m.name, m.addr)})"
        entries.append(f"New:  {m.title} | {m.subject} | Author: {author}")
    # Discussion on earlier series: posted before the range, replies in it.
    first_reply: dict[str, int] = {}
    for m in rng:
        if m.kind == "reply" and m.series and m.series not in listed:
            first_reply.setdefault(m.series, m.pos)
    posted: dict[str, list[Mail]] = defaultdict(list)
    for m in mails[:start]:
        if m.kind in ("patch", "cover") and m.series in first_reply and not m.redelivered:
            posted[m.series].append(m)
    discussion = []
    disc_sids = {}
    for sid in sorted(first_reply, key=first_reply.get):
        before = [m for m in posted.get(sid, []) if m.dup_of is None]
        if not before:
            continue
        show = min(before, key=lambda m: (m.counter if m.counter is not None else 1, m.pos))
        day = datetime.fromtimestamp(min(m.date for m in posted[sid]), UTC).date().isoformat()
        item = (
            f"{show.subject} | {person(show.name, show.addr)}, posted {day}, "
            f"{count_replies(replies[sid])}"
        )
        discussion.append(item)
        disc_sids[item] = sid
        facts_of[item] = facts(mails, sid, show, end, versions_too=False)
    replied = defaultdict(list)
    for m in mails[:end]:
        if m.kind == "reply" and m.series:
            replied[m.series].append(m)
    sids = {**dict(zip(lines, listed, strict=True)), **disc_sids}
    return Expected(
        stats, lines, entries, facts_of, discussion, {i: replied[s] for i, s in sids.items()}
    )


def facts(mails: list[Mail], sid: str, show: Mail, end: int, versions_too: bool) -> str:
    """The full style's line: trailer counts; version; applied."""
    upto = [m for m in mails[:end] if not m.redelivered]
    givers: dict[str, set[str]] = defaultdict(set)
    note = ""
    submitter = show.addr.lower()
    for m in upto:
        if m.kind != "reply" or m.series != sid:
            continue
        for line in m.own:
            t = TRAILER.match(line.rstrip())
            if t:
                found = mailbox(t.group(2), strict=False)
                who = found[1].lower() if found else " ".join(t.group(2).split()).casefold()
                givers[t.group(1).capitalize() + "-by"].add(who)
        if not note and m.addr.lower() != submitter:
            got = applied_note(m.own)
            if got is not None:
                name = got[0] or m.name or m.addr
                note = f"applied by {name} to {got[1]}" if got[1] else f"applied by {name}"
    parts = [
        ", ".join(
            f"{len(givers[k])} {k}" for k in ("Reviewed-by", "Acked-by", "Tested-by") if givers[k]
        )
    ]
    if versions_too:
        parts.append(version_text(upto, sid))
    parts.append(note)
    return "; ".join(p for p in parts if p)


def version_text(upto: list[Mail], sid: str) -> str:
    """`supersedes vN (date)` / `superseded by vN` among the same work's series."""
    works: dict[str, tuple[str, str, str, int, int]] = {}
    firsts: dict[str, int] = {}
    best: dict[str, Mail] = {}
    for m in upto:
        if m.kind not in ("patch", "cover") or not m.series:
            continue
        firsts[m.series] = min(m.date, firsts.get(m.series, m.date))
        if m.dup_of is not None:
            continue
        rank = (0 if m.kind == "cover" else 1, m.counter if m.counter is not None else 1, m.pos)
        cur = best.get(m.series)
        if cur is None or rank < (0 if cur.kind == "cover" else 1, cur.counter or 1, cur.pos):
            best[m.series] = m
    change: dict[str, str] = {}
    for m in upto:
        if m.series and m.change_id:
            change.setdefault(m.series, m.change_id)
    for s, m in best.items():
        title = " ".join(m.title.split()).casefold()
        works[s] = (m.addr.lower(), title, change.get(s, ""), m.version, firsts[s])
    if sid not in works:
        return ""
    addr, title, cid, version, when = works[sid]
    others = [
        (w[4], w[3])
        for s, w in works.items()
        if s != sid and w[3] != version and ((w[0], w[1]) == (addr, title) or (cid and w[2] == cid))
    ]
    newer = [o for o in others if o > (when, version)]
    if newer:
        return f"superseded by v{min(newer)[1]}"
    older = [o for o in others if o < (when, version)]
    if not older:
        return ""
    w, v = max(older)
    return f"supersedes v{v} ({datetime.fromtimestamp(w, UTC).date().isoformat()})"


# -- the bot's digest, read back ----------------------------------------------


def bot_digest(bot: list[str], archive: Path, data: Path, a: str, b: str, style: str) -> str:
    out = subprocess.run(
        [
            *bot,
            "--data-dir",
            str(data),
            "--archive",
            str(archive),
            "digest",
            "--range",
            f"{a}..{b}",
            "--style",
            style,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=data.parent,  # not a checkout: `-m bot.cli` must import the --bot version
    )
    if out.returncode:
        raise RuntimeError(out.stderr.strip())
    return out.stdout


def count_replies(n: int) -> str:
    """FORMAT.md: `1 reply`, not `1 replies`."""
    return "1 reply" if n == 1 else f"{n} replies"


def read_back(text: str, style: str) -> Expected:
    # A bot from before FORMAT.md said `1 reply` wrote `1 replies`; that is
    # another finding (issue 23), not one this reading looks for.
    text = re.sub(r"(?m)^(    .*, )1 replies$", r"\g<1>1 reply", text)
    lines = text.split("\n")
    i_dom = lines.index("Top 15 contributor Email domains (Based on Email Body)")
    i_ppl = lines.index("Top 15 contributors (Based on Email Body)")
    i_pl = lines.index("===== Patch list in this time period =====")
    i_cm = lines.index("===== Patch Commit Messages ====")
    stats = (
        [x for x in lines[i_dom + 1 : i_ppl] if x]
        + ["--"]
        + [x for x in lines[i_ppl + 1 : i_pl] if x]
    )
    i_disc = (
        lines.index("===== Discussion on earlier series =====")
        if ("===== Discussion on earlier series =====" in lines)
        else None
    )
    pl_end = min(
        i
        for i in (
            i_disc,
            i_cm,
            *[j for j, x in enumerate(lines) if x.startswith("===== ") and j > i_pl],
        )
        if i is not None
    )
    facts: dict[str, str] = {}

    def items(block: list[str]) -> list[str]:
        out, j = [], 0
        block = [x for x in block if x]
        while j < len(block):
            item = f"{block[j]} | {block[j + 1].strip()}"
            j += 2
            fact = ""
            while j < len(block) and block[j].startswith("    "):
                if not block[j].strip().startswith("https://"):
                    fact = block[j].strip()
                j += 1
            out.append(item)
            facts[item] = re.sub(r"(-by) \([^()]*\)", r"\1", fact)
        return out

    patch_list = items(lines[i_pl + 1 : pl_end])
    discussion = []
    if i_disc is not None:
        disc_end = min(j for j, x in enumerate(lines) if x.startswith("===== ") and j > i_disc)
        discussion = items(lines[i_disc + 1 : disc_end])
    entries = []
    for j in range(i_cm, len(lines)):
        if lines[j].startswith("New:  "):
            entries.append(f"{lines[j]} | {lines[j + 1]} | {lines[j + 2]}")
        elif lines[j].startswith("Exist: "):
            entries.append(lines[j])
    return Expected(stats, patch_list, entries, facts if style == "full" else {}, discussion)


def compare(want: Expected, got: Expected, full: bool) -> list[str]:
    out = []
    for name in ("stats", "patch_list", "entries") + (("discussion",) if full else ()):
        w, g = getattr(want, name), getattr(got, name)
        if w != g:
            for line in w:
                if line not in g:
                    out.append(f"{name}: missing  {line}")
            for line in g:
                if line not in w:
                    out.append(f"{name}: extra    {line}")
            if not out:
                out.append(f"{name}: order differs")
    if full:
        for item, fact in want.facts.items():
            if item in got.facts and got.facts[item] != fact:
                out.append(f"facts: {item}\n      want {fact!r}\n      got  {fact_of(got, item)!r}")
                if ("applied" in fact) != ("applied" in got.facts[item]):
                    out += [f"      says: {x}" for x in verb_sentences(want.series_of[item])]
    return out


def verb_sentences(mails: list[Mail]) -> list[str]:
    """The own sentences of a series' replies that use applied/queued/pushed."""
    out = []
    for m in mails:
        text = " ".join(x.strip() for x in m.own if x.strip())
        for s in re.split(r"(?<=[.!?])\s+", text):
            if re.search(r"\b(?:applied|queued|pushed)\b", s, re.I):
                out.append(f"{m.pos} {m.addr}: {s[:160]}")
    return out


def fact_of(e: Expected, item: str) -> str:
    return e.facts.get(item, "")


# -- ranges --------------------------------------------------------------------


def random_ranges(mails: list[Mail], count: int, seed: int) -> list[tuple[int, int, str]]:
    """(start, end, label): day, three-day and week windows by arrival time."""
    rnd = random.Random(seed)
    lo, hi = mails[0].when, mails[-1].when
    out = []
    while len(out) < count:
        days = rnd.choice((1, 3, 7))
        since = rnd.randrange(lo, hi - days * 86400) // 86400 * 86400
        until = since + days * 86400
        inside = [m.pos for m in mails if since <= m.when < until]
        if not inside:
            continue
        start, end = min(inside) - 1, max(inside)
        label = f"{datetime.fromtimestamp(since, UTC).date()} +{days}d"
        out.append((start, end, label))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="a public-inbox epoch (git dir) or a bundle")
    parser.add_argument("--ranges", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true", help="print each disagreement")
    parser.add_argument(
        "--bot",
        default=str(BOT),
        help="the kvm-digest command to check (default: this checkout's), e.g. "
        "'env PYTHONPATH=/tmp/old .venv/bin/python -m bot.cli' for another version",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        archive = args.archive
        if archive.is_file():
            archive = Path(tmp) / "a.git"
            subprocess.run(
                ["git", "clone", "-q", "--bare", str(args.archive), str(archive)], check=True
            )
        mails = load(archive)
        assign_series(mails)
        data = Path(tmp) / "data"
        classic_same = full_same = 0
        ranges_ = random_ranges(mails, args.ranges, args.seed)
        for start, end, label in ranges_:
            a = mails[start - 1].commit if start > 0 else "0" * 40
            b = mails[end - 1].commit
            want = expected(mails, start, end)
            bot = shlex.split(args.bot)
            got_c = read_back(bot_digest(bot, archive, data, a[:12], b[:12], "classic"), "classic")
            got_f = read_back(bot_digest(bot, archive, data, a[:12], b[:12], "full"), "full")
            diff_c = compare(want, got_c, full=False)
            diff_f = compare(want, got_f, full=True)
            classic_same += not diff_c
            full_same += not diff_f
            if args.verbose and (diff_c or diff_f):
                print(f"== {label} ({a[:9]}..{b[:9]}, {end - start} messages)")
                for line in dict.fromkeys(diff_c + diff_f):
                    print("   " + line)
        n = len(ranges_)
        print(f"{n} ranges: classic identical {classic_same}/{n},", end=" ")
        print(f"full without disagreement {full_same}/{n}")
        return 0 if classic_same == n else 1


if __name__ == "__main__":
    sys.exit(main())
