"""Starting K shards: memory admission, the supervisor's policies, and the local process launcher."""
