"""One shard process: prepare (plan, dirs, heap) -> lock -> the loop (analyse, commit, heartbeat)."""
