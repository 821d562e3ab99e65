"""Parsing: one raw message in, the facts the index needs out (kinds, subjects, bodies)."""
