"""The console scripts: one module per command, each only parsing flags and calling its layer."""
