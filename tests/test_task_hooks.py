"""The optional JVM hooks of the task protocol (shardrun.task.RunsOnJvm) and their defaults in the core."""

from __future__ import annotations

import os

import pytest

from shardrun.config import JvmConfig
from shardrun.errors import EXIT_USERS_FAILED, ConfigError, EnvironmentProblem, HeapTooSmall, ShardrunError
from shardrun.heap_plan import plan_heap
from shardrun.infodynamics import task as default_task
from shardrun.infodynamics.jidt import HEAP_ADVICE
from shardrun.shard.jvm import is_heap_exhaustion, task_classpath, task_jvm_options, task_jvm_provenance
from shardrun.shard.attempts import failure_reason
from shardrun.task import DEFAULT_HEAP_ADVICE, heap_advice
from shardrun.units import MIB

JVM = JvmConfig(xms=None, xmx="256m")


class Bare:
    """A task with none of the optional hooks."""


class Hooked:
    def jvm_classpath(self, settings, configured):
        return ["/opt/lib/a.jar", configured or "/opt/lib/b.jar"]

    def jvm_options(self, settings):
        return ["-Dexample=1"]

    def is_heap_exhaustion(self, exc):
        return "out of table space" in str(exc)

    def heap_advice(self, settings):
        return "use a shorter window"

    def jvm_provenance(self, classpath):
        return {"a_jar": classpath[0]}


def test_without_hooks_the_classpath_is_jvm_classpath_each_entry_existing(tmp_path):
    assert task_classpath(Bare(), None, JVM) == []
    jar, folder = tmp_path / "x.jar", tmp_path / "classes"
    jar.write_bytes(b"")
    folder.mkdir()
    configured = JvmConfig(xms=None, xmx="256m", classpath=f"{jar}{os.pathsep}{folder}")
    assert task_classpath(Bare(), None, configured) == [str(jar.resolve()), str(folder.resolve())]
    missing = JvmConfig(xms=None, xmx="256m", classpath=str(tmp_path / "nope.jar"))
    with pytest.raises(EnvironmentProblem, match="jvm.classpath names .*nope.jar, which does not exist"):
        task_classpath(Bare(), None, missing)


def test_a_task_hook_decides_the_classpath_given_jvm_classpath():
    assert task_classpath(Hooked(), None, JVM) == ["/opt/lib/a.jar", "/opt/lib/b.jar"]
    given = JvmConfig(xms=None, xmx="256m", classpath="/elsewhere/c.jar")
    assert task_classpath(Hooked(), None, given) == ["/opt/lib/a.jar", "/elsewhere/c.jar"]


def test_the_default_task_refuses_a_missing_jar_naming_the_package(tmp_path):
    given = JvmConfig(xms=None, xmx="256m", classpath=str(tmp_path / "infodynamics.jar"))
    with pytest.raises(EnvironmentProblem, match="pip install --no-deps idtxl-uv"):
        task_classpath(default_task, None, given)
    (jar,) = task_classpath(default_task, None, JVM)
    assert jar.endswith("infodynamics.jar")
    assert len(task_jvm_provenance(default_task, [jar])["jidt_jar_sha256"]) == 64


def test_task_jvm_options_and_provenance():
    assert task_jvm_options(Bare(), None) == () and task_jvm_options(Hooked(), None) == ("-Dexample=1",)
    assert task_jvm_provenance(Bare(), ["x"]) == {} and task_jvm_provenance(Hooked(), ["x"]) == {"a_jar": "x"}

    class SetsTheHeap:
        def jvm_options(self, settings):
            return ["-Xmx8g"]

    with pytest.raises(ConfigError, match="must be flags starting with '-' that do not set the heap"):
        task_jvm_options(SetsTheHeap(), None)


def test_heap_exhaustion_is_the_cores_java_form_plus_the_tasks_own():
    wrapped = RuntimeError("out of table space")
    assert not is_heap_exhaustion(wrapped) and not is_heap_exhaustion(wrapped, Bare())
    assert is_heap_exhaustion(wrapped, Hooked())
    assert failure_reason(wrapped, Hooked()).startswith("Java heap exhausted")
    assert failure_reason(wrapped).startswith("RuntimeError: out of table space")


def test_the_heap_advice_is_the_tasks_with_a_neutral_default():
    assert heap_advice(Bare(), None) == DEFAULT_HEAP_ADVICE
    assert heap_advice(Hooked(), None) == "use a shorter window"
    assert heap_advice(default_task, None) == HEAP_ADVICE
    needs = {"u1": 40 * 2**30}  # beyond what auto may choose
    auto = JvmConfig(xms="auto", xmx="auto")
    assert "fix: use a shorter window (auto stops at 31 GiB)" in "\n".join(
        plan_heap(auto, needs, ["u1"], advice="use a shorter window").report_lines())
    assert DEFAULT_HEAP_ADVICE in "\n".join(plan_heap(auto, needs, ["u1"]).report_lines())


def test_heap_too_small_is_a_shardrun_error_of_one_user_with_the_tasks_advice():
    error = HeapTooSmall(300 * MIB, "256m", "AIS at k=6", advice="use a shorter window")
    assert isinstance(error, ShardrunError) and error.exit_code == EXIT_USERS_FAILED
    assert "Raise jvm.xmx in the config, or use a shorter window, then run the failed users again with" \
        " --retry-failed" in str(error)
    assert "Raise jvm.xmx in the config, then run the failed users again with --retry-failed" in str(
        HeapTooSmall(None, None, "x"))
