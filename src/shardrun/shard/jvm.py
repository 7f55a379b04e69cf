"""Starting a process's one JVM with the task's classpath and options (--dry-run tries them in a `java -version`
subprocess instead), and naming Java errors.

Nothing runs at import: a JVM cannot restart and a fork after it hangs, so shards start it once, explicitly.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from shardrun.config import JvmConfig
from shardrun.errors import ConfigError, EnvironmentProblem, UsageError
from shardrun.platforms import keep_usr2_from_jvm
from shardrun.task import Task

log = logging.getLogger(__name__)


def task_classpath(task: Task, settings: Any, jvm: JvmConfig) -> list[str]:
    """The task's classpath; EnvironmentProblem with the fix when something is missing."""
    return [str(entry) for entry in task.jvm_classpath(settings, jvm.classpath)]


def task_jvm_options(task: Task, settings: Any) -> tuple[str, ...]:
    """The task's extra JVM flags (Task.jvm_options), checked like the config's jvm.options."""
    options = tuple(task.jvm_options(settings))
    for option in options:
        if not isinstance(option, str) or not option.startswith("-") or option.startswith(("-Xmx", "-Xms")):
            raise ConfigError(
                f"the task {type(task).__name__} asks for the JVM flag {option!r}; a task's jvm_options must be"
                " flags starting with '-' that do not set the heap (jvm.xms and jvm.xmx do). Fix the task."
            )
    return options


def find_java() -> str:
    """Path of the JVM library JPype will load; a clear error when there is no Java."""
    import jpype

    try:
        path = jpype.getDefaultJVMPath()
    except (jpype.JVMNotFoundException, jpype.JVMNotSupportedException) as exc:
        raise EnvironmentProblem(
            f"no usable Java runtime was found ({exc}). Install Java 11 or newer (Debian/Ubuntu:"
            " `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME to a JDK or JRE."
        ) from None
    java_home = os.environ.get("JAVA_HOME")
    # JPype quietly falls back to other Javas when JAVA_HOME is wrong; a user who set it means it.
    if java_home and not Path(path).resolve().is_relative_to(Path(java_home).resolve()):
        raise EnvironmentProblem(
            f"JAVA_HOME is {java_home}, but no JVM library was found under it. Point JAVA_HOME at a JDK or JRE"
            " (the directory that holds bin/java), or unset it to use the Java on this machine."
        )
    return path


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


def check_jvm_flags(options: Sequence[str]) -> None:
    """Refuse flags the JVM would refuse, by `java <flags> -version` in a subprocess (never in-process)."""
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


def start_jvm(config: JvmConfig, classpath: Sequence[str] = ()) -> str:
    """Start this process's JVM with the config's heap, options and `classpath` (once per process); its version."""
    import jpype

    # -Xrs: the JVM must not install its own SIGTERM/SIGINT handlers, which would run its shutdown
    # and exit under the shard's feet; the shard's Python handlers drain instead.
    args = (*config.jvm_args(), "-Xrs")
    if jpype.isJVMStarted():
        raise RuntimeError("the JVM is already running in this process; start_jvm must be called once")
    jvm_path = find_java()
    keep_usr2_from_jvm()
    entries = tuple(str(entry) for entry in classpath)
    try:
        jpype.startJVM(jvm_path, *args, classpath=list(entries), convertStrings=False, interrupt=False)
    except (OSError, RuntimeError) as exc:
        raise EnvironmentProblem(
            f"the JVM did not start with {' '.join(args)} ({exc}). Check jvm.options and jvm.xmx in the config"
            " (is the heap larger than the machine's memory?)."
        ) from None
    unlink_python_gc_from_java_gc()
    # JClass, not jpype.java.lang.System: the first walk of the `java` package costs about 0.3 s
    version = str(jpype.JClass("java.lang.System").getProperty("java.version"))
    log.info("JVM %s started with %s, classpath %s", version, " ".join(args), os.pathsep.join(entries) or "(none)")
    return version


def start_task_jvm(task: Task, settings: Any, jvm: JvmConfig, error_file: str) -> tuple[str, dict[str, Any]]:
    """Start the task's JVM (config's jvm.options win; hs_err at `error_file`): its Java version and what the
    task records of its classpath (Task.jvm_provenance)."""
    options = (*task_jvm_options(task, settings), *jvm.options, f"-XX:ErrorFile={error_file}")
    classpath = task_classpath(task, settings, jvm)
    return start_jvm(replace(jvm, options=options), classpath), dict(task.jvm_provenance(classpath))


def unlink_python_gc_from_java_gc() -> None:
    """Drop JPype's Python-GC callback: it forces full Java GCs (jpype #1197), measured 30% of a large user.

    Safe: shardrun builds no reference cycles through Java objects.
    """
    import gc

    import _jpype

    gc.callbacks[:] = [callback for callback in gc.callbacks if callback is not _jpype._collect]


def heap_used_bytes() -> int | None:
    """The JVM heap in use now (total - free, garbage included), or None without a JVM; no GC forced."""
    import jpype

    if not jpype.isJVMStarted():
        return None
    runtime = jpype.JClass("java.lang.Runtime").getRuntime()
    return int(runtime.totalMemory()) - int(runtime.freeMemory())


# --- Java error taxonomy --------------------------------------------------------------------


def java_class_name(exc: BaseException) -> str | None:
    """'java.lang.OutOfMemoryError' for a Java exception seen through JPype, else None."""
    import jpype

    return str(exc.getClass().getName()) if isinstance(exc, jpype.JException) else None


def is_heap_exhaustion(exc: BaseException, task: Task | None = None) -> bool:
    """A java.lang.OutOfMemoryError, or one of the task's own forms (Task.is_heap_exhaustion)."""
    if java_class_name(exc) == "java.lang.OutOfMemoryError":
        return True
    return task is not None and bool(task.is_heap_exhaustion(exc))


def java_stack(exc: BaseException) -> str | None:
    """The Java stack trace of a JPype exception, for errors.jsonl."""
    import jpype

    if not isinstance(exc, jpype.JException):
        return None
    try:
        return str(exc.stacktrace())
    except Exception as inner:  # the stack is a diagnostic; its absence must not hide the error
        return f"(stack trace unavailable: {inner})"
