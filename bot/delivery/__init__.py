"""Delivery: composing mail, the outbox and its SMTP worker, subscribers, schedules."""
