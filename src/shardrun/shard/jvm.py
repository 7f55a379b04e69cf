"""Starting the one JVM of a process, finding the JIDT jar, and naming Java errors.

Nothing here runs at import time: a JVM cannot be restarted in a process, and a process that
forks after starting one hangs, so the worker starts it once, explicitly, after it has decided to
do work. Workers are started with subprocess, never by forking a process that has a JVM.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from shardrun.config import JvmConfig
from shardrun.digest import file_sha256
from shardrun.errors import EnvironmentProblem

log = logging.getLogger(__name__)

JIDT_DISTRIBUTION = "idtxl-uv"
JIDT_JAR_NAME = "infodynamics.jar"
_INSTALL_HINT = (
    f"install it with `pip install --no-deps {JIDT_DISTRIBUTION}` (the README's commands do this), "
    "or point jvm.classpath in the config at an infodynamics.jar"
)


def find_jidt_jar(classpath: str | None = None) -> Path:
    """The JIDT jar: jvm.classpath if set, else the one shipped in the idtxl-uv package.

    Found through package metadata, without importing idtxl (which would pull in its heavy
    dependencies, deliberately not installed).
    """
    if classpath:
        path = Path(classpath).expanduser()
        if not path.is_file():
            raise EnvironmentProblem(f"jvm.classpath points at {path}, which is not a file; {_INSTALL_HINT}.")
        return path.resolve()
    try:
        for file in importlib.metadata.files(JIDT_DISTRIBUTION) or []:
            if file.name == JIDT_JAR_NAME:
                path = Path(file.locate())
                if path.is_file():
                    return path.resolve()
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("idtxl")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / JIDT_JAR_NAME
        if path.is_file():
            return path.resolve()
    raise EnvironmentProblem(f"the JIDT jar ({JIDT_JAR_NAME}) was not found; {_INSTALL_HINT}.")


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


@dataclass(frozen=True)
class JvmInfo:
    jar: str
    jar_sha256: str
    java_version: str
    args: tuple[str, ...]


def start_jvm(config: JvmConfig) -> JvmInfo:
    """Start this process's JVM with the config's heap and the JIDT jar (once per process)."""
    import jpype

    jar = find_jidt_jar(config.classpath)
    # -Xrs: the JVM must not install its own SIGTERM/SIGINT handlers, which would run its shutdown
    # and exit under the worker's feet; the worker's Python handlers drain instead.
    args = (*config.jvm_args(), "-Xrs")
    if jpype.isJVMStarted():
        raise RuntimeError("the JVM is already running in this process; start_jvm must be called once")
    jvm_path = find_java()
    try:
        jpype.startJVM(jvm_path, *args, classpath=[str(jar)], convertStrings=False, interrupt=False)
    except (OSError, RuntimeError) as exc:
        raise EnvironmentProblem(
            f"the JVM did not start with {' '.join(args)} ({exc}). Check jvm.options and jvm.xmx in the config"
            " (is the heap larger than the machine's memory?)."
        ) from None
    unlink_python_gc_from_java_gc()
    version = str(jpype.java.lang.System.getProperty("java.version"))
    log.info("JVM %s started with %s, JIDT jar %s", version, " ".join(args), jar)
    return JvmInfo(jar=str(jar), jar_sha256=file_sha256(jar), java_version=version, args=args)


def unlink_python_gc_from_java_gc() -> None:
    """Drop the callback JPype adds to Python's garbage collector at start.

    With it, every Python collection (thousands per user) checks JPype's memory marks and often forces
    a full Java collection (jpype issue #1197): measured 30% of the time of a user with 61,000
    observations. A Java object that Python holds is released by reference counting the moment its
    last Python reference goes, and shardrun builds no reference cycles through Java objects, so the
    hook has nothing to collect here; Java's own collector still runs whenever the heap needs it.
    """
    import gc

    import _jpype

    gc.callbacks[:] = [callback for callback in gc.callbacks if callback is not _jpype._collect]


# --- Java error taxonomy --------------------------------------------------------------------

# JIDT wraps an OutOfMemoryError of its count tables as RuntimeException("Requested memory for the base
# ..." (dense calculators) or "Requested memory for the MI bases ..." (MI and CMI) "... is too large for
# the JVM at this time").
_JIDT_HEAP_MESSAGE = re.compile(r"Requested memory for the .* is too large for the JVM")


def java_class_name(exc: BaseException) -> str | None:
    """'java.lang.OutOfMemoryError' for a Java exception seen through JPype, else None."""
    try:
        import jpype
    except ImportError:  # pragma: no cover - jpype is a hard dependency
        return None
    if isinstance(exc, jpype.JException):
        return str(exc.getClass().getName())
    return None


def is_heap_exhaustion(exc: BaseException) -> bool:
    """Both forms JIDT raises: a plain OutOfMemoryError, or JIDT's RuntimeException wrapping it."""
    name = java_class_name(exc)
    if name is None:
        return False
    if name == "java.lang.OutOfMemoryError":
        return True
    return _JIDT_HEAP_MESSAGE.search(str(exc.getMessage() or "")) is not None


def java_stack(exc: BaseException) -> str | None:
    """The Java stack trace of a JPype exception, for errors.jsonl."""
    if java_class_name(exc) is None:
        return None
    try:
        return str(exc.stacktrace())
    except Exception as inner:  # the stack is a diagnostic; its absence must not hide the error
        return f"(stack trace unavailable: {inner})"
