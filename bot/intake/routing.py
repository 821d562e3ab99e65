"""Which mail is the list's, which is for the bot, and which is neither.

The bot reads an ordinary mailbox that receives the list's traffic and
anything sent to the bot itself. List traffic carries the list's List-Id or
is addressed to the list; commands are addressed to the bot's address or one
of its plus-addressed shortcuts (`bot+subscribe@...`).
"""

from __future__ import annotations

from bot.parse.message import ParsedMessage

LIST, COMMAND, OTHER = "list", "command", "other"


def plus_base(address: str) -> str:
    """`bot+subscribe@example.org` -> `bot@example.org` (lower-cased)."""
    local, at, domain = address.lower().partition("@")
    return local.split("+", 1)[0] + at + domain


def route(parsed: ParsedMessage, list_id: str, list_address: str, bot_address: str) -> str:
    """LIST, COMMAND or OTHER for one parsed message."""
    if list_id and parsed.list_id == list_id.lower():
        return LIST
    if list_address and list_address.lower() in parsed.recipients:
        return LIST
    if bot_address and plus_base(bot_address) in {plus_base(r) for r in parsed.recipients}:
        return COMMAND
    return OTHER
