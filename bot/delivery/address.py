"""Is this a mail address? Syntax only, by email-validator, never DNS.

Used where an operator types addresses (check-config, `subscribers add`):
a typo caught there is better than a digest bouncing every day. No DNS
lookup: the check must work offline and must not stall on a slow resolver.
"""

from __future__ import annotations


def problem(address: str) -> str | None:
    """Why `address` is not a mail address, or None."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as err:
        return str(err).rstrip(".")
    return None
