"""kvm-digest: a digest bot for the KVM mailing list.

Data flows one way: intake (import, IMAP) -> archive (git, the source of
truth) -> index (SQLite, rebuildable) -> digest (Jinja2) -> outbox (SMTP).
"""

__version__ = "0.1.0"
