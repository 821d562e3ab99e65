"""Threading and digests: series, archive ranges, and the digest itself."""
