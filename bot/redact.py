"""Secrets kept out of what the bot prints: URL credentials, above all.

`[archive] follow = "https://user:token@git.example.org/kvm"` works (git
gets the credentials through its environment, bot/intake/follow.py), but
the token must never reach a log line, an error, `check-config` output or
a process's argv. Everything that shows a URL or text that may hold one
(git's stderr) passes it through `text()`; the log formatter and the CLI's
error line do so for everything else.
"""

from __future__ import annotations

import re

# Up to the authority's last "@": a password may hold one (urllib splits so too).
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s?#]*@", re.IGNORECASE)
SHOWN = "***"
"""What the userinfo of a URL is shown as."""


def text(value: str) -> str:
    """`value` with the userinfo of every URL in it shown as `***`."""
    return _USERINFO.sub(rf"\1{SHOWN}@", value)
