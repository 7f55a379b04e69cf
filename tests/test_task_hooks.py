"""The Task base class: its defaults, the optional JVM hooks, and finding a task by path or entry point."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shardrun.config import JvmConfig, parse_config
from shardrun.errors import EXIT_USERS_FAILED, ConfigError, EnvironmentProblem, HeapTooSmall, ShardrunError
from shardrun.heap_plan import plan_heap
from shardrun.infodynamics import task as default_task
from shardrun.infodynamics.jidt import HEAP_ADVICE
from shardrun.section import Section
from shardrun.shard.attempts import failure_reason
from shardrun.shard.jvm import is_heap_exhaustion, task_classpath, task_jvm_options
from shardrun.task import DEFAULT_HEAP_ADVICE, Task, load_task
from shardrun.units import MIB

JVM = JvmConfig(xms=None, xmx="256m")


class Bare(Task):
    """A task with none of the optional hooks."""

    def load(self, settings, users=None):
        raise AssertionError("not called")

    def analyse(self, dataset, user_id, settings):
        raise AssertionError("not called")


class Hooked(Bare):
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
    assert len(default_task.jvm_provenance([jar])["jidt_jar_sha256"]) == 64


def test_task_jvm_options_and_provenance():
    assert task_jvm_options(Bare(), None) == () and task_jvm_options(Hooked(), None) == ("-Dexample=1",)
    assert dict(Bare().jvm_provenance(["x"])) == {} and Hooked().jvm_provenance(["x"]) == {"a_jar": "x"}

    class SetsTheHeap(Bare):
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
    assert Bare().heap_advice(None) == DEFAULT_HEAP_ADVICE
    assert Hooked().heap_advice(None) == "use a shorter window"
    assert default_task.heap_advice(None) == HEAP_ADVICE
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


# --- the base class's defaults, and finding a task ------------------------------------------


class Keyed(Bare):
    columns = ("n", "mean")

    @dataclass(frozen=True)
    class Settings:
        path: Path
        min_readings: int = 5
        scale: float = 1.0
        label: str | None = None
        levels: tuple[int, ...] = (2, 3)
        names: list[str] = field(default_factory=lambda: ["a"])


def test_settings_are_read_from_the_dataclass_by_field_strictly():
    settings = Keyed().parse_settings(Section({"path": "d.csv", "scale": 2, "label": None, "levels": [4]}))
    assert settings == Keyed.Settings(Path("d.csv"), 5, 2.0, None, (4,), ["a"]) and isinstance(settings.scale, float)
    with pytest.raises(ConfigError, match="config key 'path' is required"):
        Keyed().parse_settings(Section({}))
    with pytest.raises(ConfigError, match="config key 'min_readings' must be int"):
        Keyed().parse_settings(Section({"path": "d.csv", "min_readings": "5"}))
    typo = Section({"path": "d.csv", "min_reading": 3})
    Keyed().parse_settings(typo)
    with pytest.raises(ConfigError, match="unknown config key 'min_reading'.*'min_readings'"):
        typo.finish()
    assert Bare().parse_settings(Section({})) is None


def test_the_columns_are_declared_once_and_a_failed_user_gets_one_empty_row():
    assert Keyed().result_columns(None) == ["user_id", "status", "reason", "n", "mean"]
    assert Keyed().failed_rows(None, "u1", "RuntimeError: boom") == [
        {"user_id": "u1", "status": "failed", "reason": "RuntimeError: boom", "n": None, "mean": None}]
    assert (Bare().check_rows(None, None), Bare().preflight(None, 1), Bare().user_index(None)) == ([], [], None)
    assert Bare().user_heap_needs(None, None) is None and Bare().with_threads("s", 4) == "s"


def plugin(tmp_path: Path, monkeypatch, body: str, entry_point: str | None = None) -> None:
    """A module `lab_tasks` on the Python path, and with `entry_point` an installed package declaring it."""
    (tmp_path / "lab_tasks.py").write_text("from shardrun.task import Task\n\n" + body)
    if entry_point:
        info = tmp_path / "lab_tasks-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-tasks\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[shardrun.tasks]\n{entry_point}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lab_tasks", raising=False)


MINIMAL = """class Lab(Task):
    def load(self, settings, users=None):
        return None

    def analyse(self, dataset, user_id, settings):
        return []


task = Lab()
"""


def test_a_task_is_found_by_path_by_class_or_by_an_installed_entry_point(tmp_path, monkeypatch):
    plugin(tmp_path, monkeypatch, MINIMAL, entry_point="lab = lab_tasks:task")
    assert type(load_task("lab_tasks:task")).__name__ == "Lab"
    assert type(load_task("lab_tasks:Lab")).__name__ == "Lab"  # a Task subclass is instantiated
    assert load_task("lab") is load_task("lab_tasks:task")
    assert parse_config({"task": "lab"}).task == "lab"
    with pytest.raises(ConfigError, match=r"'labb' has no ':', and no installed package declares it in the"
                                          r" entry-point group 'shardrun.tasks' \(declared: .*lab"):
        load_task("labb")


def test_an_object_that_is_not_a_task_is_refused_with_the_fix(tmp_path, monkeypatch):
    plugin(tmp_path, monkeypatch, """class Duck:
    key_columns = ("user_id",)

    def parse_settings(self, section):
        return None


task = Duck()


class Half(Task):
    def load(self, settings, users=None):
        return None
""")
    with pytest.raises(ConfigError, match="'lab_tasks:task', a Duck, which is not a shardrun.task.Task. Make its"
                                          " class subclass shardrun.task.Task"):
        load_task("lab_tasks:task")
    with pytest.raises(ConfigError, match="'lab_tasks:Half', which cannot be made a task: .*analyse"):
        load_task("lab_tasks:Half")
    with pytest.raises(ConfigError, match="'lab_tasks:nothing'|no object 'nothing'"):
        load_task("lab_tasks:nothing")
