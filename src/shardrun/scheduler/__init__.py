"""The clusters scheduler as shardrun sees it: its commands and the runs record of submissions."""
