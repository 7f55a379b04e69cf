"""What a local launch shows and leaves: its messages, the shards' progress (lines or a live table),
RUN/launcher.json for `monitor_progress`, the summary at the end and the command that continues the run."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypedDict

from shardrun.errors import EXIT_USERS_FAILED
from shardrun.launch.options import LaunchOptions
from shardrun.launch.policies import describe_exit, log_excerpt, shows_its_error
from shardrun.launch.supervisor import RecordDeath, Supervisor
from shardrun.observe import progress
from shardrun.observe.progress import LiveTable
from shardrun.states import ShardState
from shardrun.storage.atomic import utc_now, write_json_atomic
from shardrun.storage.paths import RunPaths, ShardPaths, shard_log_path
from shardrun.storage.status import record_death as record_death_in_status
from shardrun.storage.status import status_document


class Display:
    """The launcher's messages, and the progress as plain lines or a table redrawn below them."""

    def __init__(self, out: Callable[[str], None], options: LaunchOptions):
        self._out = out
        self.options = options
        self.live = LiveTable()

    def say(self, message: str) -> None:
        self._out(message)
        self.live.forget()  # the live table is redrawn below the message, not over it

    def progress(self, views: list[progress.ShardView], cpu: dict | None) -> None:
        if self.options.live:
            self.live.draw(views, self.options.max_parallel, cpu)
        else:
            self.say(progress.plain_line(views, self.options.max_parallel, cpu))


def shard_views(run: RunPaths, supervisor: Supervisor, users_total: list[int | None]) -> list[progress.ShardView]:
    """Each shard's row from its status.json and its phase in the supervisor."""
    now = datetime.now(UTC)
    views = []
    for slot in supervisor.slots:
        spec = supervisor.spec(slot.index)
        views.append(progress.read_view(str(spec), run.shard(spec).status, now, stale_after=120.0,
                                        launcher_phase=slot.phase.value, expected_total=users_total[slot.index]))
    return views


class LauncherShard(TypedDict):
    """A shard's entry in launcher.json (Launcher.slot_json)."""

    shard: Annotated[str, "`\"i/K\"`"]
    phase: Annotated[str, "`waiting`: not started yet or waiting for its restart; `running`; `suspended` by"
                          " `--cpu-limit`; `done`: exited and not started again"]
    pid: Annotated[int | None, "its latest process (also after it ended)"]
    users_total: Annotated[int | None, "its users"]
    starts: Annotated[int, "processes started"]
    restarts: Annotated[int, "of those, restarts"]
    xmx: Annotated[str, "the `-Xmx` of its latest process"]
    exits: Annotated[list[int], "its processes' exit codes"]
    deaths: Annotated[list[str], "how each abnormal end was described"]
    memory_budget_bytes: Annotated[int | None, "what the memory admission counted for it at its current heap:"
                                               " [GUIDE.md](GUIDE.md#memory)"]


class LauncherJson(TypedDict):
    pid: Annotated[int, "the launcher's process"]
    host: Annotated[str, "the launcher's machine"]
    updated_at: Annotated[str, "the launcher's last write"]
    max_parallel: Annotated[int | None, "shards running at once"]
    cpu_limit: Annotated[float | None, "`--cpu-limit` P"]
    cpu: Annotated[dict[str, float] | None, "its `limit` and the latest reading in percent of the CPUs the run may"
                                            " use, `cpus_percent` (every program) and `run_percent` (the run's"
                                            " shards); null without `--cpu-limit`"]
    shards: Annotated[list[LauncherShard], "per shard (below)"]


def write_launcher_json(run: RunPaths, options: LaunchOptions, cpu: dict | None, shards: list[LauncherShard]) -> None:
    doc: LauncherJson = {"pid": os.getpid(), "host": socket.gethostname(), "updated_at": utc_now(),
           "max_parallel": options.max_parallel, "cpu_limit": options.cpu_limit, "cpu": cpu, "shards": shards}
    write_json_atomic(run.launcher_json, doc)


def record_death(shard: ShardPaths, death: RecordDeath) -> None:
    """A shard's death (a signal, a JVM crash) in its status.json, which its process could not write."""
    record_death_in_status(shard, death.code, death.description, list(death.hs_err_files))


def summary(run: RunPaths, supervisor: Supervisor, views: list[progress.ShardView], log_dir: Path,
            written: bool, say: Callable[[str], None]) -> dict[str, int]:
    """Say the run dir and each shard's end (its error lines when it shows one); each shard's exit code."""
    say(f"run dir: {run.dir}" if written else "run dir: none (no shard wrote run.json)")
    codes = supervisor.exit_codes()
    for slot, view in zip(supervisor.slots, views):
        spec = supervisor.spec(slot.index)
        code = codes[str(spec)]
        log_path = shard_log_path(log_dir, spec)
        stopped = stopped_early(run.shard(spec).status, code)
        excerpt = [stopped] if stopped else shard_error_lines(log_path) if slot.exits and shows_its_error(code) else []
        restarts = f", restarted {slot.restarts}x" if slot.restarts else ""
        counts = (f" {view.done}/{view.total} users ({view.ok} ok, {view.skipped} skipped, {view.failed} failed)"
                  if view.total else "")
        said = ("stopped early: its first users all failed alike (fail fast)" if stopped
                else describe_exit(code, log_hint=not excerpt) if slot.exits else "never started")
        say(f"  shard {spec}: {said}{restarts};{counts} log {log_path}"
            + "".join(f"\n      {line}" for line in excerpt))
    return codes


def stopped_early(status_path: Path, code: int) -> str | None:
    """The error of a shard that exited 1 with users left (fail fast: status.json's last_error), else None."""
    if code != EXIT_USERS_FAILED:
        return None
    doc = status_document(status_path)
    if doc.get("state") != ShardState.FAILED or not doc.get("users_todo"):
        return None
    return str(doc.get("last_error") or "")


def resume_hint(run: RunPaths, options: LaunchOptions, config_source: Path | None, interrupted: bool = True) -> str:
    """The command that continues (or starts) this run, saying first when a refusal must be fixed."""
    written = run.run_json.is_file()
    then = "continue it with" if written else "the same command starts the run"
    then = then[0].upper() + then[1:] if interrupted else f"Once the errors above are fixed, {then}"
    where = "the run is incomplete." if written else "nothing was written (no shard got as far as run.json)."
    return f"{where} {then}: {options.continue_command(config_source, run.dir if written else None)}"


def shard_error_lines(log_path: Path, tail_bytes: int = 256 * 1024) -> list[str]:
    """The lines of a shard's log that say why it stopped (policies.log_excerpt), from the log's end."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - tail_bytes, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return log_excerpt(text)
