"""What a reply's own words say: review trailers, "applied", b4 change-ids.

These are read once, when a message is indexed (`notes()`), from the text
its author wrote: lines quoted with `>` are someone else's words, and an
Outlook-style `-----Original Message-----` starts a quote that runs to the
end. The index keeps the facts per message; which series they count for is
decided when a digest is built, so mail arriving in any order gives the same
result (see bot/digest/versions.py and build.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.parse import mime
from bot.record import pickled_as_values

TRAILER_KINDS = ("Reviewed-by", "Acked-by", "Tested-by")
_TRAILER = re.compile(r"^(reviewed|acked|tested)-by:[ \t]*(\S.*)$", re.IGNORECASE)
_CHANGE_ID = re.compile(r"^[ \t]*change-id:[ \t]*(\S+)[ \t]*$", re.IGNORECASE | re.MULTILINE)
# Most mail says none of this: plain substring scans of the lower-cased
# text (much faster than a case-insensitive regex) decide whether its lines
# need reading at all.
_REPLY_WORDS = ("reviewed-by:", "acked-by:", "tested-by:", "applied", "queued", "pushed")
_OUTLOOK_QUOTE = re.compile(r"^-{3,}\s*original message\s*-{3,}\s*$", re.IGNORECASE)
_ATTRIBUTION = re.compile(r"\bwrote:\s*$")

# "Applied": the maintainer's note that the patches were taken (FORMAT.md,
# "Reviews, versions, applied"). A sentence is read clause by clause; the
# clause with the verb (applied, queued, pushed) must read as someone
# taking the patches: no subject or the writer's own ("I've", "we"), or the
# patches themselves in the passive ("this is queued", "patches 1-3 now
# queued up"), then what was taken, then where to or nothing more:
# "Applied to kvm-arm64/next, thanks!", "Fixed the typo and applied to
# hyperv-next.", "Ok, this is queued in my for-next branch.", "I've pushed
# these three patches to hyperv-next.". Anything else says something else:
# a third person ("Marc applied it"), a question, a condition or a plan
# ("once it is applied", "I'll queue it"), a negation, or a tester's report
# ("Applied on top of 6.8.4, it prevents the oops", "applies cleanly").
_VERB = re.compile(r"\b(?:applied|queued|pushed)\b", re.IGNORECASE)
_MAX_NOTE = 400
"""Characters of a sentence read for a note (real ones are far shorter)."""
_NUMBERS = r"#?\d+(?:\s*(?:-|to|and|&|,)\s*#?\d+)*"
_COUNT = r"(?:\d+|two|three|four|five|six|seven|eight|nine|ten|both|all)"
_THING = (
    r"(?:series|set|patch(?:es|set|-?set)?|fix(?:es)?|backports?|changes?|version|revision|lot)"
)
# What was taken: "this", "it", "the series", "these three patches",
# "patches 1-3", "patch 2 of this series", "v2", "both backports".
_WHAT = (
    rf"(?:(?:the\s+)?(?:whole|first|full|entire|remaining|last|rest\s+of\s+the)\s+{_THING}"
    rf"|(?:this|that|these|those|the|your|all|both)(?:\s+{_COUNT})?\s+{_THING}"
    rf"|{_COUNT}\s+{_THING}|{_THING}(?:\s+{_NUMBERS})?|{_NUMBERS}"
    r"|this(?:\s+one)?|that(?:\s+one)?|it|these|those|them|they|both|all\s+of\s+them|all"
    r"|v\d+)"
    rf"(?:\s+(?:{_NUMBERS}|only))?(?:\s+of\s+(?:this|the|your)\s+series)?"
)
_LEAD = r"(?:(?:and|so|ok|okay|now|for\s+now|anyway|also|then|hence|meanwhile|finally)\s+)?"
_ADVERBS = r"(?:(?:now|also|just|finally|provisionally|already|both|all|then|eventually)\s+)*"
_AUX = r"(?:(?:is|are|was|were|has\s+been|have\s+been|got|gets|'s\s+been|'s)\s+)?"
# The part of the clause before the verb, whole.
_BEFORE = re.compile(
    rf"^[\s(\"'*]*{_LEAD}"
    rf"(?:(?:i|we)(?:'ve|\s+have|\s+had|'d)?\s+{_ADVERBS}"
    rf"|{_WHAT}\s+{_ADVERBS}{_AUX}{_ADVERBS}"
    rf"|{_ADVERBS})$",
    re.IGNORECASE,
)
# The part after the verb: an optional particle and object, then a
# destination, a benefit ("for 5.12"), a remark, or nothing.
_AFTER = re.compile(
    rf"^(?:\s+(?:up|out|in))?(?:\s+(?P<what>{_WHAT}))?(?:\s+(?:up|out))?"
    r"(?:\s+(?:manually|again|already|now|too|as\s+well))?"
    r"(?P<rest>\s*(?:$|[,.!;:(\[]|-+\s|(?:to|into|onto|in|for|with|as|along|via|through|"
    r"together|alongside|after|since|thanks|thank|now|already|here|minus|except|but|apart|"
    r"including|without|plus|and|everywhere|on\s+top\s+of)\b).*)$",
    re.IGNORECASE | re.DOTALL,
)
# Words before the verb that make it a question, a condition, a plan, a
# wish or a negation: "once it is applied", "it should be queued", "not yet
# pushed", "I'd like it queued".
_NOT_DONE = re.compile(
    r"\b(?:if|unless|once|whether|until|till|provided|assuming|when|whenever|before|after|"
    r"would|should|could|can|will|may|might|shall|must|need|needs|needed|ought|going|"
    r"plan|plans|planning|hope|hoping|expect|want|wants|wanted|wait|waiting|wonder|like|"
    r"not|never|no|nobody|yet|why|how|what|who|where|please|ask|asked|asking|try|trying|"
    r"tried|let|suggest|think|guess|assume|maybe|perhaps)\b|n't\b|'ll\b",
    re.IGNORECASE,
)
# A tester's report, anywhere in the sentence: "applied it and it boots",
# "Applied on top of 6.8.4, it prevents the oops", "applies cleanly".
_TESTED = re.compile(
    r"(?<![/\w.-])(?:locally|cleanly|able\s+to|boot(?:s|ed|ing)?|crash(?:es|ed|ing)?|oops|"
    r"reproduc\w*|tested|works\s+(?:for\s+me|fine|well)|pass(?:es|ed)|local|"
    r"no\s+regressions?|(?:builds?|compiles?)\s+(?:fine|cleanly|ok)|"
    r"and\s+(?:ran|run|running|booted|built|compiled|tried|see|saw|got|observed|noticed|"
    r"the\s+(?:guest|host|test|tests|system|machine|kernel|box|board))\b|"
    r"it\s+(?:prevents|fixes|works|solves|resolves|helps|boots|builds|compiles)|"
    r"(?:problem|issue|bug|warning|error|crash)\s+(?:is\s+|was\s+)?(?:gone|fixed|solved)|"
    r"on\s+top\s+of\s+(?:v?\d|-?rc\d|linux|mainline|next-|my|the\s+latest|current|today)|"
    r"on\s+(?:v?\d|-?rc\d|linux|mainline|next-|my|a|an|the\s+latest)\b)",
    re.IGNORECASE,
)
# A sentence that names its tree in the next paragraph, as Mark Brown's do.
_OPEN_TO = re.compile(r"\b(?:applied|queued|pushed)\s+(?:to|into)\s*:?$", re.IGNORECASE)
# "by Marc": someone else did it (the writer is not the one who applied).
_BY_OTHER = re.compile(r"^\W*\s*by\s+\w", re.IGNORECASE)
_LATER = re.compile(r"(?:\s+(?:up|out))?(?P<rest>\s+(?:to|into|onto)\b.*)$", re.DOTALL)
# "I've applied it to the patch": review comments taken into one's own work.
_TO_WORK = re.compile(
    r"^\s*to\s+(?:the|my|this|your|our)\s+(?:\w+\s+)?(?:patch|series|commit|code|v\d+|version)\b",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(
    r",\s*(?!\d)|;\s*|:\s+|\s+-+\s+|(?<!\d)\s+(?:and|but|so)\s+(?!\d)", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words that end a tree's name: "to kvmarm/next in order to ...", "for 5.12".
_NOT_NAME = (
    r"(?:for|with|as|and|or|of|so|now|since|after|before|thanks|thank|because|which|where|but|"
    r"then|too|already|in|into|to|on|at|by|from|if|once|until|while|when|instead|together|"
    r"along|minus|except|apart|without|including|plus|this|it|i|we|you|is|was|will)"
)
# Where to: the words after "to"/"into"/"in", up to the end of the clause.
_DEST = re.compile(
    r"^\s*(?:to|into|onto|in)\s+(?:(?:the|my|our|his|her|their|your|[\w-]+'s)\s+)?"
    r"(?P<dest>[^\s,;!?]+(?:\s+\([^()\s]{1,60}\))?(?:\s+(?!" + _NOT_NAME + r"(?:\s|$))"
    r"[^\s,;!?(\[]+){0,2})",
    re.IGNORECASE,
)
_GENERIC_DEST = re.compile(
    r"^(?:tree|branch|repo|repository|queue|git|it|this|that|them|place|there|patch|"
    r"series|mainline|upstream|v?\d[\d.]*(?:-rc\d+)?|-?rc\d+)$",
    re.IGNORECASE,
)
_DEST_TAIL = re.compile(r"(?:\s+(?:git\s+)?(?:tree|branch|repo|repository))+$", re.IGNORECASE)
# The kernel.org patchwork bot: "This series was applied to netdev/net.git
# (main)\nby Jakub Kicinski <kuba@kernel.org>:" (older notes name no one).
_PATCHWORK = re.compile(
    r"^This\s+(?:patch|series|pull\s+request|patch\s*set)\s+was\s+applied\s+to\s+"
    r"(?P<dest>\S+(?:\s+\([^()]*\))?)(?:\s+by\s+(?P<name>[^<>:]+?)(?:\s*<[^<>\s]+>)?)?\s*:?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Applied:
    """What an "applied" note says: by whom (when not its sender) and where to."""

    by: str = ""
    """The name the note gives (the patchwork bot's "by ..."); "" for its sender."""
    to: str = ""
    """The tree or branch it names ("kvmarm/next", "netdev/net.git (main)"), or ""."""


@pickled_as_values
@dataclass(frozen=True)
class Notes:
    """The facts one message contributes (empty for most messages)."""

    trailers: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, name, key) per trailer line; the key is the lower-cased address."""
    applied: bool = False
    change_id: str = ""
    applied_by: str = ""
    """Who applied them, when the note names someone other than its sender."""
    applied_to: str = ""
    """The tree or branch the note names, or ""."""


def own_lines(text: str) -> list[str]:
    """The lines of a message its author wrote, without quotes or signature."""
    out = []
    for line in text.splitlines():
        lead = line.lstrip()[:3]
        if lead[:1] == ">":
            continue
        if line == "-- " or (lead == "---" and _OUTLOOK_QUOTE.match(line.strip())):
            break
        out.append(line)
    return out


def trailers(lines: list[str]) -> list[tuple[str, str, str]]:
    """`Reviewed-by:`/`Acked-by:`/`Tested-by:` lines, each (kind, name, key).

    Only at the very start of a line: an indented one is part of something
    pasted (a commit log), not the author's own tag.
    """
    out = []
    for line in lines:
        m = _TRAILER.match(line.rstrip())
        if not m:
            continue
        kind = m.group(1).capitalize() + "-by"
        name, addr = mime.parse_address(m.group(2).strip())
        key = addr.lower() if addr else " ".join(m.group(2).split()).casefold()
        if not key:
            continue
        out.append((kind, name or addr or m.group(2).strip(), key))
    return out


def _paragraphs(lines: list[str]) -> list[str]:
    """Own text as paragraphs, each joined into one line; attribution lines dropped."""
    out: list[str] = []
    para: list[str] = []
    for line in [*lines, ""]:
        if line.strip() and not _ATTRIBUTION.search(line):
            para.append(line.strip())
            continue
        if para:
            out.append(" ".join(para))
        para = []
    return out


def _sentences(lines: list[str]) -> list[str]:
    """Own text as sentences: paragraphs joined, split after . ! ?"""
    return [s for para in _paragraphs(lines) for s in _SENTENCE_END.split(para) if s]


def says_applied(lines: list[str]) -> bool:
    """True when the author's own text says the patches were taken (see applied_note)."""
    return applied_note(lines) is not None


def applied_note(lines: list[str]) -> Applied | None:
    """What the author's own text says about the patches being taken, if anything.

    The patchwork bot's note names who applied them and where; a person's
    sentence names where when it says so ("Applied to kvmarm/next").
    """
    paras = _paragraphs(lines)
    for para in paras:
        if m := _PATCHWORK.match(para[:_MAX_NOTE]):
            return Applied(by=" ".join((m.group("name") or "").split()), to=m.group("dest"))
    for i, para in enumerate(paras):
        if _OPEN_TO.search(para) and i + 1 < len(paras):
            # "Applied to\n\n   https://git.kernel.org/.../spi.git for-next\n\nThanks!"
            para = f"{para} {paras[i + 1]}"
        for sentence in _SENTENCE_END.split(para):
            # A note is one short sentence: reading only its start keeps a
            # hostile megabyte-long "sentence" linear.
            found = _applied_sentence(sentence[:_MAX_NOTE].strip()) if sentence else None
            if found is not None:
                return found
    return None


def _applied_sentence(sentence: str) -> Applied | None:
    """The note of one sentence that says the patches were taken, else None."""
    if sentence.endswith("?") or not _VERB.search(sentence) or _TESTED.search(sentence):
        return None
    for verb in _VERB.finditer(sentence):
        before = sentence[: verb.start()]
        if _NOT_DONE.search(before):
            return None  # and so is every later verb of the sentence
        # The clause the verb is in: from the last break before it.
        breaks = list(_CLAUSE_BREAK.finditer(before))
        clause = before[breaks[-1].end() :] if breaks else before
        if not _BEFORE.match(clause):
            continue
        after = _AFTER.match(sentence[verb.end() :])
        if after is None:
            continue
        rest = after.group("rest")
        if _BY_OTHER.match(rest) or _TO_WORK.match(rest):
            continue
        dest = _destination(rest)
        if dest[:1].isdigit():
            continue  # "applied the patches to our 4.19.36 stable branch": a downstream copy
        if not dest:
            # "Applied and pushed to -next": a later verb may say where.
            dest = next((d for d in map(_later_destination, _VERB.finditer(rest)) if d), "")
        return Applied(to=dest)
    return None


def _later_destination(verb: re.Match[str]) -> str:
    """Where a later verb of the sentence says the patches went ("and pushed to -next")."""
    m = _LATER.match(verb.string, verb.end())
    return _destination(m.group("rest")) if m else ""


def _destination(rest: str) -> str:
    """The tree or branch named right after the verb ("to kvm/queue"), or ""."""
    m = _DEST.match(rest)
    if not m:
        return ""
    dest = re.split(r":(?:\s|$)", m.group("dest"))[0].rstrip(".:")
    if dest.count("(") != dest.count(")"):  # "(for-next/fixes" or "next)"
        dest = dest.split("(")[0].rstrip(")]")
    dest = _DEST_TAIL.sub("", dest).strip()
    if not dest or _GENERIC_DEST.match(dest):
        return ""
    return dest


def change_id(text: str) -> str:
    """b4's `change-id:` (it names one piece of work across its versions)."""
    if "change-id:" not in text.lower():
        return ""
    m = _CHANGE_ID.search(text)
    return m.group(1) if m else ""


def notes(kind: str, texts: list[str]) -> Notes:
    """The facts of one message, from its decoded text parts.

    Replies give trailers and "applied"; patches and cover letters give the
    b4 change-id (after the `---`, so not in the stored commit message).
    """
    if kind == "reply":
        text = "\n".join(texts)
        low = text.lower()
        if not any(word in low for word in _REPLY_WORDS):
            return Notes()
        lines = own_lines(text)
        note = applied_note(lines)
        return Notes(
            trailers=trailers(lines),
            applied=note is not None,
            applied_by=note.by if note else "",
            applied_to=note.to if note else "",
        )
    if kind in ("patch", "cover"):
        return Notes(change_id=change_id("\n".join(texts)))
    return Notes()
