"""Shard dirs -> one result set: read, combine (dedupe, conflicts, coverage), frame, report, write;
validate; the pictures (summary.png: the task's panels; run.png: the per-shard timeline) and trace.tsv."""
