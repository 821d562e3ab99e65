"""Intake: where mail comes from (files, git, IMAP) and how it reaches the archive."""
