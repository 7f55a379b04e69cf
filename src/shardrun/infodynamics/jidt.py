"""JIDT on the JVM: where its jar is, how it reports heap exhaustion, and what to record of it.

These are the default task's answers to the JVM hooks of the task protocol (shardrun.task):
`jvm_classpath` (the jar), `is_heap_exhaustion` (JIDT's wrapped OutOfMemoryError), `heap_advice`
and `jvm_provenance` (the sha256 of the jar the JVM loaded, recorded in status.json).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from shardrun.digest import file_sha256
from shardrun.errors import EnvironmentProblem

JIDT_DISTRIBUTION = "idtxl-uv"
JIDT_JAR_NAME = "infodynamics.jar"
_INSTALL_HINT = (
    f"install it with `pip install --no-deps {JIDT_DISTRIBUTION}` (the README's commands do this), "
    "or point jvm.classpath in the config at an infodynamics.jar"
)
# What a user whose analysis does not fit in the heap can change, besides the heap (the heap model
# grows with the largest history length k).
HEAP_ADVICE = "lower k_selection.k_max or the k grid"


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


def jvm_classpath(settings: object, configured: str | None) -> list[str]:
    """Task.jvm_classpath: the JIDT jar (jvm.classpath names it, or the idtxl-uv package ships it)."""
    return [str(find_jidt_jar(configured))]


def jvm_provenance(classpath: Sequence[str]) -> dict[str, str]:
    """Task.jvm_provenance: the sha256 of the JIDT jar the JVM was started with."""
    return {"jidt_jar_sha256": file_sha256(Path(classpath[0]))} if classpath else {}


def heap_advice(settings: object) -> str:
    """Task.heap_advice."""
    return HEAP_ADVICE


# JIDT wraps an OutOfMemoryError of its count tables as RuntimeException("Requested memory for the base
# ..." (dense calculators) or "Requested memory for the MI bases ..." (MI and CMI) "... is too large for
# the JVM at this time").
_JIDT_HEAP_MESSAGE = re.compile(r"Requested memory for the .* is too large for the JVM")


def _java_class_name(exc: BaseException) -> str | None:
    import jpype

    return str(exc.getClass().getName()) if isinstance(exc, jpype.JException) else None


def is_jidt_heap_exhaustion(exc: BaseException) -> bool:
    """Task.is_heap_exhaustion: JIDT's RuntimeException that wraps an OutOfMemoryError."""
    import jpype

    if not isinstance(exc, jpype.JException):
        return False
    return _JIDT_HEAP_MESSAGE.search(str(exc.getMessage() or "")) is not None


def is_heap_exhaustion(exc: BaseException) -> bool:
    """Both forms JIDT raises: a plain OutOfMemoryError, or JIDT's RuntimeException wrapping it."""
    return _java_class_name(exc) == "java.lang.OutOfMemoryError" or is_jidt_heap_exhaustion(exc)
