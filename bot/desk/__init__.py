"""The command desk: command mail in (LMTP/SMTP), checked, answered once."""
