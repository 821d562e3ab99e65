"""Subject lines: reply prefixes, bracketed tags and the `[PATCH vN n/m]` marker.

Kernel subjects carry their metadata in leading bracket groups, in many
spellings: `[PATCH v2 3/7]`, `[PATCH 03/32]`, `[RFC PATCH v3 0/4]`,
`[PATCH RESEND]`, `[PATCH net-next v2 1/2]`, `[kvm-unit-tests PATCH]`,
`[GIT PULL]`, `[RFC][PATCH 1/2]`, `[PATCHv2]`. Replies put `Re:`, `Aw:`,
`Fwd:`... in front, sometimes repeatedly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|antw|fwd?)\s*(?:\[\d+\]|\(\d+\))?\s*:\s*", re.I)
_BRACKET = re.compile(r"^\s*\[([^\[\]]*)\]\s*")
_COUNTER = re.compile(r"^0*(\d{1,4})/0*(\d{1,4})$")
_VERSION = re.compile(r"^v(\d{1,3})$", re.I)
# `PATCHv2`, `PATCH-v2`, `RFCv3`: a version glued to the tag word.
_GLUED = re.compile(r"^(patch|rfc|resend)-?v(\d{1,3})$", re.I)
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Subject:
    """What a subject line says about its message."""

    full: str
    """The whole subject, unfolded, whitespace collapsed."""
    base: str
    """The subject without reply prefixes: what a reply and its parent share."""
    title: str
    """The subject without reply prefixes and leading bracket groups."""
    is_reply: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    """Lower-cased words found in the leading bracket groups."""
    version: int = 1
    counter: int | None = None
    total: int | None = None

    @property
    def is_patch(self) -> bool:
        """True when the tags announce a patch or an RFC."""
        return "patch" in self.tags or "rfc" in self.tags

    @property
    def is_pull(self) -> bool:
        """True for `[GIT PULL]` (also spelt `[GIT,PULL]` or `[PULL]`)."""
        return "pull" in self.tags


def collapse(text: str) -> str:
    """Unfold and collapse runs of white space to one space, as `git am` does."""
    return _WS.sub(" ", text).strip()


def parse_subject(raw: str) -> Subject:
    """Parse a decoded subject; any text is accepted and nothing is raised."""
    full = collapse(raw)
    rest = full
    is_reply = False
    while m := _REPLY_PREFIX.match(rest):
        is_reply = True
        rest = rest[m.end() :]
    base = rest
    tags: list[str] = []
    version, counter, total = 1, None, None
    while m := _BRACKET.match(rest):
        rest = rest[m.end() :]
        for word in re.split(r"[\s,]+", m.group(1)):
            if not word:
                continue
            if c := _COUNTER.match(word):
                counter, total = int(c.group(1)), int(c.group(2))
            elif v := _VERSION.match(word):
                version = int(v.group(1))
            elif g := _GLUED.match(word):
                tags.append(g.group(1).lower())
                version = int(g.group(2))
            else:
                tags.append(word.lower())
        # A reply prefix after the tags (`[PATCH] Re: foo`) still makes a reply.
        while r := _REPLY_PREFIX.match(rest):
            is_reply = True
            rest = rest[r.end() :]
    return Subject(
        full=full,
        base=base,
        title=rest.strip(),
        is_reply=is_reply,
        tags=tuple(tags),
        version=max(version, 1),
        counter=counter,
        total=total if total else None,
    )
