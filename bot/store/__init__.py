"""Storage: the git archive (the truth) and the SQLite index (a rebuildable cache)."""
