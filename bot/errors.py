"""The one error type users see.

Every failure a person can fix (a bad range, a bad config, a file that is not
mail) is raised as a ``DigestError`` whose message is one plain sentence that
says what is wrong and what to do. The CLI prints it and exits non-zero; the
daemon logs it and carries on. Anything else is a bug and keeps its traceback.
"""


class DigestError(Exception):
    """A problem the user can act on; ``str(err)`` is the whole explanation."""


class ConfigError(DigestError):
    """The configuration file or a setting in it is wrong."""


class RangeError(DigestError):
    """A digest range names ids or dates the archive cannot resolve."""


class MailError(DigestError):
    """A message or mail source cannot be read as mail."""


class ArchiveError(DigestError):
    """git cannot read the archive: a damaged pack, a missing object, a dying git."""
