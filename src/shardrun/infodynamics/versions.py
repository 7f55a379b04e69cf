"""Provenance of the numbers: the JIDT jar (from idtxl-uv; it computes every measure and draws the
permutations) and numpy (quantile edges and symbols)."""

from __future__ import annotations

import importlib.metadata

import numpy as np

from shardrun.digest import file_sha256
from shardrun.errors import EnvironmentProblem
from shardrun.infodynamics.jidt import JIDT_DISTRIBUTION, find_jidt_jar


def describe_versions() -> dict[str, str]:
    """Versions to record in run.json; needs no JVM. Absent parts are recorded as such."""
    versions = {"numpy": np.__version__}
    try:
        versions[JIDT_DISTRIBUTION] = importlib.metadata.version(JIDT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        versions[JIDT_DISTRIBUTION] = "not installed"
    try:
        jar = find_jidt_jar()
    except EnvironmentProblem as exc:
        versions["jidt_jar"] = f"not found: {exc}"
    else:
        versions["jidt_jar"] = str(jar)
        versions["jidt_jar_sha256"] = file_sha256(jar)
    return versions
