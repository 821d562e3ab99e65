"""Email commands, one small class per module, as in Mailman 3.

A command has a `name`, a one-line `description`, `examples`, and one method,
`run(ctx, args) -> str | None`, which returns the text of its part of the
reply (None: nothing new to say, e.g. a confirmation already pending) or
raises CommandError with a plain sentence. Commands are found by scanning
this package, so adding a command touches one file.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import jinja2

from bot.config import Config
from bot.delivery.mail import Identity
from bot.errors import DigestError

if TYPE_CHECKING:
    from bot.delivery.subscribers import Pending


MAX_ECHO = 80
"""The most user text a reply quotes: one line of this many characters."""
NOT_REPEATED = "[your words, not repeated]"
"""What a reply says where it has already quoted its one line of user text."""
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


class CommandError(DigestError):
    """A command could not be done; the message says why, for the reply."""


def sanitise(text: str, limit: int = MAX_ECHO) -> str:
    """User text made safe to quote: one line of printable ASCII, at most `limit`."""
    line = " ".join(_UNPRINTABLE.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class Context:
    """What a command may use: the index, the config, who asked."""

    conn: sqlite3.Connection
    config: Config
    me: Identity
    sender: str
    """The asker's address (header From), normalised (bot.desk.addresses.normal)."""
    env: jinja2.Environment
    key: str = ""
    """The asker's mailbox for limits and pending requests (addresses.limit_key)."""
    reply_subject: str | None = None
    """Set by a command that needs the reply to carry a given subject."""
    digest_reply: bool = False
    """Set by a command whose result is a whole digest: the reply is that
    digest alone (with its footer), not a quoted command and its answer."""
    notes: list[str] = field(default_factory=list)
    quoted: bool = False
    """True once the reply has quoted its one line of the asker's words."""

    def quote(self, text: str, limit: int = MAX_ECHO) -> str:
        """The asker's words for the reply: the first time, sanitised to one line
        of at most `limit` characters; after that, a placeholder.

        The sender may be forged, so a reply must not carry someone else's
        text to the victim: every reply quotes at most one short line, and
        every command shows user words through here (README, "No echo").
        """
        if self.quoted:
            return NOT_REPEATED
        self.quoted = True
        return sanitise(text, limit)


class Command:
    """Base class: subclasses set the class attributes and implement run()."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    examples: ClassVar[tuple[str, ...]] = ()
    alone: ClassVar[bool] = False
    """True when its result is the whole reply if it is the only command."""
    arguments: ClassVar[bool] = True
    """False for a command that takes none: `status of this series` is a sentence."""

    def run(self, ctx: Context, args: list[str]) -> str | None:
        raise NotImplementedError

    def urgent(self, args: list[str]) -> bool:
        """True when this request takes effect even past a limit on replies
        (only its answer is dropped or put off): leaving, and confirming.

        A forged sender can use up a mailbox's replies for the day; it must
        not also keep that mailbox from unsubscribing.
        """
        return False

    def confirmed(self, ctx: Context, request: Pending) -> str | None:
        """Finish a request of this command that its owner confirmed (`confirm`).

        Only commands that store a token (its action is their name) have one.
        """
        raise CommandError(f"{self.name} requests need no confirmation")


def registry() -> dict[str, Command]:
    """Every command in this package, by name."""
    found: dict[str, Command] = {}
    for module in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(mod).values():
            if isinstance(value, type) and issubclass(value, Command) and value.name:
                found[value.name] = value()
    return dict(sorted(found.items()))
