"""The exceptions shardrun raises on purpose, and their exit codes.

Every message names the problem and the fix in one paragraph: its reader is a researcher, not the author.
"""

from __future__ import annotations

from shardrun.units import format_bytes

# Exit codes of every command (documented in docs/GUIDE.md, "Exit codes").
EXIT_OK = 0
EXIT_USERS_FAILED = 1  # the shard finished but some users failed (see errors.jsonl), or it failed fast
EXIT_USAGE = 2  # bad flags, config, data or environment: nothing was computed
EXIT_INTERRUPTED = 3  # stopped by a signal; resume with --resume
EXIT_SHARD_LOCKED = 4  # another live process holds the shard (or launches the run, or merges into the output)
EXIT_VALIDATION_FAILED = 5  # validate_outputs / merge found problems, or failed users beyond --max-failed
EXIT_STORAGE = 6  # the shard dir cannot be written (disk full, read-only, ...); committed users are kept
EXIT_PREEMPTED = 7  # drained ahead of the scheduler's stop (time limit, preemption); requeued or resume
EXIT_CLOSED_PIPE = 141  # the reader of stdout left (`| head`): what a program stopped by SIGPIPE gives the shell
EXIT_CRASH = 70  # an unexpected error (a bug) or, for the launcher, a shard that died abnormally


class StopSignalReceived(BaseException):
    """A stop signal reached a command without a drain; a BaseException, like KeyboardInterrupt."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class ShardrunError(Exception):
    """Base of the errors that carry a user-facing message and an exit code."""

    exit_code = EXIT_USAGE


class ConfigError(ShardrunError):
    """The YAML config is malformed, has an unknown key or a bad value."""


class TaskNotImportable(ConfigError):
    """The config's task module cannot be imported here (a plug-in not on the Python path)."""


class DataError(ShardrunError):
    """The input table cannot be used (missing file or column, no users, ...)."""


class UsageError(ShardrunError):
    """The command-line flags do not fit together."""


class EnvironmentProblem(ShardrunError):
    """Java, a jar the task needs or another prerequisite is missing or broken."""


class ResumeMismatch(ShardrunError):
    """--resume was pointed at a dir that belongs to another config or shard layout."""


class MergeError(ShardrunError):
    """The given dirs cannot be merged as they are (not shard dirs, or shards of different configs)."""


class StorageError(ShardrunError):
    """The shard's files cannot be written (disk full, read-only, ...); what was committed stays."""

    exit_code = EXIT_STORAGE


class AlreadyCommitted(ShardrunError):
    """A user's result file exists already: a second commit of the same user is refused (exactly once)."""

    exit_code = EXIT_CRASH


class ShardLocked(ShardrunError):
    """Another live process is running the same shard dir."""

    exit_code = EXIT_SHARD_LOCKED


class AlreadyRunning(ShardLocked):
    """Another live process runs the same run (a launcher) or writes the same merge output."""


class LocksUnsupported(EnvironmentProblem):
    """No file locks on the shard dir's filesystem and SHARDRUN_LOCK=flock forbids the lease file."""


class HeapTooSmall(ShardrunError):
    """One user's analysis needs more Java heap than the JVM was given (per user, never the whole run)."""

    exit_code = EXIT_USERS_FAILED

    def __init__(self, needed_bytes: int | None, xmx: str | None, detail: str, advice: str | None = None):
        self.needed_bytes = needed_bytes
        self.xmx = xmx
        need = f"about {format_bytes(needed_bytes)}" if needed_bytes else "more heap"
        other_way = f", or {advice}" if advice else ""
        super().__init__(
            f"Java heap exhausted: this user needs {need} of heap but the JVM has -Xmx{xmx or '?'}"
            f" ({detail}). Raise jvm.xmx in the config{other_way}, then run the failed users again with"
            " --retry-failed (run_production --resume SHARD_DIR, or launch_shards --out RUN)."
        )


class SchedulerError(ShardrunError):
    """The cluster's scheduler refused or failed a request (submit, requeue, query); its own words are in the
    message."""
