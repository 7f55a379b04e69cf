"""The commands: one module per command, each only parsing flags and calling its layer.

SUBCOMMANDS: `shardrun SUB` -> the module (also the command's console name) and its line in `shardrun --help`.
Imports nothing: entry.py reads it before the stop signals are noted."""

SUBCOMMANDS = (
    ("run", "run_production", "run one shard of the analysis, resumable"),
    ("launch", "launch_shards", "run K shards as local processes or a SLURM job array, then merge"),
    ("merge", "merge_shard_results", "merge shard dirs into one result set"),
    ("validate", "validate_outputs", "check that a merged result set is whole and sane"),
    ("monitor", "monitor_progress", "show the progress of runs"),
    ("stop", "stop_shards", "drain every live shard of a run on this host, as Ctrl-C does"),
)
