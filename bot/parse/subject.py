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

from bot.record import pickled_as_values

# Reply and forward prefixes as mail clients write them in many languages
# (`Re`, `Aw`, `Sv`, `Vs`, `Antw`, `Odp`, `Rif`, `Fwd`, `Fw`, `Wg`, `Tr`, the
# Chinese ones with a full-width colon), optionally counted: `Re[2]:`, `Re^2:`.
_REPLY_PREFIX = re.compile(
    r"^\s*(?:re|aw|sv|vs|antw|odp|odg|rif|ynt|fwd?|wg|tr|回复|答复|回覆|转发|轉寄)"
    r"\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]\s*",
    re.I,
)
_BRACKET = re.compile(r"^\s*\[([^\[\]]*)\]\s*")
_COUNTER = re.compile(r"^0*(\d{1,4})/0*(\d{1,4})$")
# Mercurial's patchbomb numbers `[PATCH 1 of 4]`: the same marker as `1/4`.
_COUNTER_OF = re.compile(r"(?<![\w/])0*(\d{1,4})\s+of\s+0*(\d{1,4})(?![\w/])", re.I)
_TAG_BREAK = re.compile(r"[\s,]+")
_VERSION = re.compile(r"^v(\d{1,3})$", re.I)
# `PATCHv2`, `PATCH-v2`, `RFCv3`: a version glued to the tag word.
_GLUED = re.compile(r"^(patch|rfc|resend)-?v(\d{1,3})$", re.I)
_WS = re.compile(r"\s+")
# Automated notes about a patch, by their subject: the stable team's
# `Patch "..." has been added to the 5.10-stable tree`, `FAILED: patch "..."
# failed to apply to 5.10-stable tree`, `patch "..." added to usb-next`,
# tip-bot's `[tip: x86/urgent] ...`, the media tree's `[git:media_tree/master]`
# and Andrew Morton's `+ foo.patch added to mm-unstable branch`.
_NOTICE = re.compile(
    r"""^(?:FAILED:\s*)?patch\s+["“].*["”]\s+
          (?:has\s+been\s+|was\s+)?(?:added|removed|dropped|queued|applied|merged|failed)(?:\s|$)
      |^\[(?:tip|git):[^\]]*\]
      |^\[(?:merged|folded-merged|withdrawn|to-be-updated|nacked|obsolete)(?:\s[^\]]*)?\]
          \s*\S+\.patch\b
      |^[+-]\s*\S+\.patch\s+(?:added\s+to|removed\s+from)\s""",
    re.I | re.X,
)


@pickled_as_values
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
    """`vN` of the tags; 1 when none is given. `v0` is a version of its own."""
    counter: int | None = None
    total: int | None = None

    @property
    def is_patch(self) -> bool:
        """True when the tags announce a patch or an RFC."""
        return "patch" in self.tags or "rfc" in self.tags

    @property
    def is_notice(self) -> bool:
        """True for an automated note about a patch (FORMAT.md "Kinds of message")."""
        return not self.is_reply and bool(_NOTICE.match(self.base))

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
        group = _COUNTER_OF.sub(r"\1/\2", m.group(1))
        for word in _TAG_BREAK.split(group):
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
        version=version,
        counter=counter,
        total=total if total else None,
    )
