"""run_production --dry-run: the shard's plan and what cannot run, said; the JVM's flags tried in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from shardrun.config import RunConfig
from shardrun.errors import EXIT_OK, EXIT_USAGE, EnvironmentProblem, UsageError
from shardrun.shard.jvm import find_java, task_jvm_options
from shardrun.shard.plan import partition_report
from shardrun.shard.prepare import PreparedShard, ShardOptions, prepare


def dry_run(config: RunConfig, options: ShardOptions, say: Callable[[str], None]) -> int:
    """Say the plan (users, dir, partition, heap) and the task's problems with it; exit 2 when it has any."""
    prepared = prepare(config, options)
    plan = prepared.plan
    say(f"shard {plan.shard}: {len(plan.assigned)} users assigned, {len(plan.done)} already done,"
        f" {len(plan.todo)} to do")
    say(f"shard dir: {prepared.dirs.shard.dir}")
    for line in partition_report(prepared.index, plan.shard.count, config.partition):
        say(line)
    say(f"jvm: {prepared.heap.jvm_line()}")
    for line in prepared.heap.report_lines():
        say(line)
    for problem in prepared.problems:
        say(f"cannot run: {problem}")
    check_jvm_options(prepared, config, say)
    if not prepared.problems:
        say("preflight: the task found nothing that cannot run with this heap")
    return EXIT_USAGE if prepared.problems else EXIT_OK


def java_executable(jvm_library: str) -> str:
    """The `java` launcher of the Java whose JVM library JPype would load (lib/server/libjvm.so -> bin/java)."""
    library = Path(jvm_library).resolve()
    for home in library.parents[:4]:
        for name in ("java", "java.exe"):
            candidate = home / "bin" / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise EnvironmentProblem(f"no java launcher was found next to {jvm_library} nor on PATH; set JAVA_HOME.")
    return found


def check_jvm_options(prepared: PreparedShard, config: RunConfig, say: Callable[[str], None]) -> None:
    """Refuse flags the JVM would refuse, by `java <flags> -version` in a subprocess (never in-process)."""
    options = (*task_jvm_options(prepared.task, config.settings), *prepared.heap.jvm.jvm_args(), "-Xrs")
    command = [java_executable(find_java()), *options, "-version"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"could not run {' '.join(command)} to check the JVM flags ({exc}).") from None
    if result.returncode != 0:
        said = " ".join(line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip())
        raise UsageError(
            f"the JVM refuses the flags {' '.join(options)}: {said} Fix jvm.options, jvm.xms or jvm.xmx in the"
            " config (or --xmx)."
        )
    say(f"java accepts the flags: {' '.join(options)}")
