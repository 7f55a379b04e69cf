"""Shared fixtures. A JVM cannot be restarted in a process, so the tests share one."""

from __future__ import annotations

import pytest

from shardrun.config import JvmConfig
from shardrun.jvm import start_jvm


@pytest.fixture(scope="session")
def jvm():
    """Start this pytest process's JVM with the JIDT jar, once, for the tests that ask for it."""
    import jpype

    if not jpype.isJVMStarted():
        start_jvm(JvmConfig(xms=None, xmx="512m"))
