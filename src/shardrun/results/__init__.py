"""Shard dirs -> one result set: read, combine (dedupe, conflicts, coverage), write, validate, picture."""
