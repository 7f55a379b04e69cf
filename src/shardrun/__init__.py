"""shardrun: run a per-user JVM analysis across K processes that resume, merge and validate."""
