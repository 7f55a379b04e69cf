"""The core's config keys, strict parsing, and environment errors: each names the key or the fix; and the
generated config reference kept equal to the code."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shardrun.config import load_config, parse_config
from shardrun.errors import ConfigError
from shardrun.units import heap_bytes

REPO = Path(__file__).resolve().parents[1]
SMALL = yaml.safe_load((REPO / "config" / "small.yaml").read_text())


def with_change(path: str, value):
    config = yaml.safe_load(yaml.safe_dump(SMALL))
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


def test_the_shipped_configs_parse():
    for name in ("proposal.yaml", "small.yaml"):
        config = load_config(REPO / "config" / name)
        assert config.task == "shardrun.infodynamics:task"
        assert config.jvm.xmx_is_auto or heap_bytes(config.jvm.xmx) >= heap_bytes("128m")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("jvm.xmx", "lots", "'jvm.xmx' must be a JVM heap size"),
        ("jvm.xmx", 512, "'jvm.xmx' must be str"),
        ("jvm.xms", "2g", "'jvm.xms' (2g) is larger than 'jvm.xmx'"),
        ("jvm.options", ["-Xmx4g"], "'jvm.options' must not set the heap"),
        ("jvm.options", ["verbose"], "'jvm.options' must list JVM flags"),
        ("jvm.colour", "blue", "unknown config key 'jvm.colour'"),
        ("output.root", ["a"], "'output.root' must be str"),
        ("threads", 4, "unknown config key 'threads'"),
        ("jvm.threads", 0, "'jvm.threads' must be auto or a positive number of threads"),
        ("jvm.threads", "many", "'jvm.threads' must be auto or a positive number of threads"),
        ("jvm.threads", 1.5, "'jvm.threads' must be int or str"),
        ("task", "no_such_module:task", "'task' names module 'no_such_module'"),
        ("task", "shardrun.infodynamics", "'task' must look like 'package.module:object'"),
        ("jvm", "big", "'jvm' must be a mapping"),
    ],
)
def test_bad_core_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as error:
        parse_config(with_change(key, value))
    assert message in str(error.value)


def test_hash_covers_the_science_not_the_heap_or_paths():
    base = parse_config(SMALL).hash
    assert parse_config(with_change("jvm.xmx", "2g")).hash == base
    assert parse_config(with_change("output.root", "elsewhere")).hash == base
    assert parse_config(with_change("seed", 1)).hash != base
    assert parse_config(with_change("surrogates", 11)).hash != base
    threaded = parse_config(with_change("jvm.threads", 8))
    assert threaded.hash == base and threaded.jvm.threads == 8 and parse_config(SMALL).jvm.threads is None
    from shardrun.config import config_hash
    from shardrun.infodynamics import task

    assert config_hash(threaded.task, task.with_threads(threaded.settings, 8)) == base  # threads change no number


def test_a_run_dir_of_the_earlier_p_values_is_not_continued():
    """The p-value's definition is part of the engine, so of the config hash: a run dir started when a p
    was JIDT's b / S (engine observed-pasts-v1/<scheme>) is refused on resume as another config's run."""
    import dataclasses

    from shardrun.config import config_hash
    from shardrun.infodynamics.settings import ENGINE, P_VALUES
    from shardrun.infodynamics.surrogates import SCHEME
    from shardrun.storage.paths import run_difference

    config = parse_config(SMALL)
    assert P_VALUES in ENGINE and config.settings.engine == ENGINE
    earlier = config_hash(config.task, dataclasses.replace(config.settings, engine=f"observed-pasts-v1/{SCHEME}"))
    assert earlier != config.hash
    difference = run_difference({"shards": 2, "config_hash": earlier}, 2, config.hash)
    assert difference is not None and difference[0] == "config_hash" and earlier in difference[1]


def test_auto_threads_share_this_process_cpus_among_the_shards():
    from shardrun.config import resolve_threads, usable_cpus

    assert resolve_threads(3, 64) == 3  # a configured count is kept
    assert resolve_threads(None, 1) == usable_cpus()
    assert resolve_threads(None, usable_cpus() * 4) == 1


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("jvm:\n  xmx: [1g\n")
    with pytest.raises(ConfigError, match="not valid YAML at line") as said:
        load_config(broken)
    assert "Fix the file there" in str(said.value)  # the fix, not only the parser's complaint
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("jvm:\n\txmx: 1g\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2") as said:
        load_config(tabbed)
    assert "never tabs" in str(said.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(empty)


def run_production(config: dict, tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    config = {**config, "output": {"root": str(tmp_path / "out")}}
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "shardrun", "run", "--config", str(path), "--full", "--shard", "0/2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def test_missing_jar_is_refused_before_anything_is_written(tmp_path):
    result = run_production(with_change("jvm.classpath", str(tmp_path / "nope.jar")), tmp_path)
    assert result.returncode == 2
    assert "jvm.classpath points at" in result.stderr and "pip install --no-deps idtxl-uv" in result.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_java_home_is_refused_with_the_fix(tmp_path):
    result = run_production(SMALL, tmp_path, env={"JAVA_HOME": str(tmp_path / "no-java")})
    assert result.returncode == 2
    assert "JAVA_HOME is" in result.stderr and "Point JAVA_HOME at a JDK" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_config_reference_is_what_the_code_says_now():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "tools" / "config_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.TARGET.read_text(encoding="utf-8") == generator.reference(), (
        f"docs/CONFIG.md is stale: regenerate it with `{generator.REGENERATE}` and commit it")
