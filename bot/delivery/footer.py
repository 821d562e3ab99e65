"""What the bot's mail says at its foot (FORMAT.md, "Footer").

A mailed digest ends with `-- ` and at most four lines: how this reader
leaves (its own one-click page or secret address), how to change topic or
style, where discussion belongs (the list: replies to a digest reach only
the bot) and a person to ask. `kvm-digest digest` prints none, so the
reference digests reproduce as they are. Every other reply ends with a
shorter signature that names the same person.
"""

from __future__ import annotations

from bot.delivery.mail import Identity

SEPARATOR = "-- "
"""The signature separator (RFC 3676 4.3): clients dim or strip what follows."""


def digest_footer(me: Identity, secret: str | None) -> str:
    """The footer of one reader's digest; `secret` None for a non-subscriber."""
    if secret is None:
        leave = f"Subscribe: mail {me.plus('subscribe')}"
    elif me.unsubscribe_url(secret):
        leave = f"Unsubscribe: {me.unsubscribe_url(secret)}"
    else:
        leave = f"Unsubscribe: mail {me.unsubscribe_address(secret)}"
    lines = [SEPARATOR, leave, f"Topic or style: send 'help' to {me.address}"]
    if me.list_address:
        lines.append(f"Discuss on {me.list_address} (replies here reach only the bot)")
    lines.append(f"Questions for a person: {me.contact}")
    return "\n".join(lines) + "\n"


def signature(me: Identity) -> str:
    """The foot of every other reply: who wrote it, and a person to ask."""
    return f"{SEPARATOR}\n{me.list_title} digest bot; questions for a person: {me.contact}\n"


def with_foot(body: str, foot: str) -> str:
    """`body` as it is, then a blank line (when it has none) and `foot`."""
    if body.endswith("\n\n"):
        return body + foot
    return body + ("\n" if body.endswith("\n") else "\n\n") + foot
