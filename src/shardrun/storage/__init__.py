"""Files on disk: the paths object, atomic writes, exactly-once result commits, the lock, status.json."""
