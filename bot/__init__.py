"""kvm-digest: a digest bot for the KVM mailing list.

Data flows one way: intake (import, IMAP) -> archive (git, the source of
truth) -> index (SQLite, rebuildable) -> digest (Jinja2) -> outbox (SMTP).

The version comes from git: bot/version.py.
"""
