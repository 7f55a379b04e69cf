"""Shard dirs -> one result set: read, combine (dedupe, conflicts, coverage), frame, report, write;
validate; the summary picture (the per-shard timeline, plus the task's own panels)."""
