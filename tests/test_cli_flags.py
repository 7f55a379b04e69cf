"""Flags of every command: values refused by the parser (exit 2, no traceback), --version, help with defaults,
and the dry run's check of the JVM flags by the JVM itself (in a subprocess)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shardrun.cli import (
    launch_shards,
    merge_shard_results,
    monitor_progress,
    run_production,
    stop_shards,
    validate_outputs,
)
from shardrun.launch.launcher import LaunchOptions, shard_command
from shardrun.partition import ShardSpec

REPO = Path(__file__).resolve().parents[1]
PARSERS = {
    "run_production": run_production.parser,
    "launch_shards": launch_shards.parser,
    "merge_shard_results": merge_shard_results.parser,
    "validate_outputs": validate_outputs.parser,
    "monitor_progress": monitor_progress.parser,
    "stop_shards": stop_shards.parser,
}


def refused(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--full", "--shard", "0/4", "--cooldown", "-1"], "--cooldown"),
    (["--full", "--shard", "0/4", "--heartbeat", "0"], "--heartbeat"),
    (["--full", "--shard", "0/4", "--nice", "-1"], "--nice"),
    (["--full", "--shard", "0/4", "--nice", "20"], "--nice"),
    (["--full", "--shard", "0/4", "--xmx", "lots"], "--xmx"),
    (["--full", "--shard", "0/4", "--pilot", "0"], "--pilot"),
    (["--full", "--shard", "0/4", "--fail-fast", "-1"], "--fail-fast"),
])
def test_run_production_refuses_bad_numbers(argv, words, capsys):
    assert words in refused(run_production.parser(), argv, capsys)


@pytest.mark.parametrize("argv, words", [
    (["--progress-every", "0"], "--progress-every"),
    (["--cooldown", "-0.5"], "--cooldown"),
    (["--nice", "-3"], "--nice"),
    (["--shards", "0"], "--shards"),
    (["--max-parallel", "0"], "--max-parallel"),
    (["--grace", "-1"], "--grace"),
    (["--restarts", "-1"], "--restarts"),
    (["--commit-interval", "-1"], "--commit-interval"),
    (["--fail-fast", "x"], "--fail-fast"),
    (["--max-failed", "-1"], "--max-failed"),
    (["--max-failed", "120%"], "--max-failed"),
    (["--max-failed", "1.5"], "--max-failed"),
])
def test_launch_shards_refuses_bad_numbers(argv, words, capsys):
    assert words in refused(launch_shards.parser(), argv, capsys)


@pytest.mark.parametrize("given, expected", [(None, 1.0), ("0", 0.0), ("30", 30.0)])
def test_launch_shards_hands_its_commit_interval_to_every_shard(given, expected, tmp_path):
    flags = [] if given is None else ["--commit-interval", given]
    args = launch_shards.parser().parse_args(flags)
    options = LaunchOptions(config_path=REPO / "config" / "proposal.yaml", shards=2,
                            commit_interval_seconds=args.commit_interval)
    command = shard_command(options.config_path, ShardSpec(1, 2), tmp_path, False, options, "1g", 1)
    assert command[1:4] == ["-m", "shardrun", "run"]
    assert run_production.parser().parse_args(command[4:]).commit_interval == expected


@pytest.mark.parametrize("value", ["lots", "-2", "2.5", "101%"])
def test_validate_outputs_refuses_a_bad_max_failed(value, capsys):
    said = refused(validate_outputs.parser(), ["--dir", "d", "--max-failed", value], capsys)
    assert "--max-failed takes a number of users (5) or a share of the users (2%)" in said


def test_launch_shards_hands_fail_fast_and_retry_failed_to_every_shard(tmp_path):
    args = launch_shards.parser().parse_args(["--fail-fast", "0", "--retry-failed", "--out", str(tmp_path)])
    options = LaunchOptions(config_path=REPO / "config" / "proposal.yaml", shards=2, fail_fast=args.fail_fast,
                            retry_failed=args.retry_failed)
    resumed = run_production.parser().parse_args(
        shard_command(options.config_path, ShardSpec(1, 2), tmp_path, True, options, "1g", 1, retry_failed=True)[4:])
    assert resumed.fail_fast == 0 and resumed.retry_failed and resumed.resume == tmp_path
    # a shard that never started has nothing to retry: it starts with --out, as run_production requires
    fresh = run_production.parser().parse_args(
        shard_command(options.config_path, ShardSpec(1, 2), tmp_path, False, options, "1g", 1, retry_failed=True)[4:])
    assert not fresh.retry_failed and fresh.out == tmp_path
    default = run_production.parser().parse_args(shard_command(
        options.config_path, ShardSpec(1, 2), tmp_path, False, LaunchOptions(options.config_path, 2), "1g", 1)[4:])
    assert default.fail_fast == 5


def test_launch_shards_retry_failed_needs_the_run_to_retry(capsys):
    assert launch_shards.main(["--retry-failed", "--shards", "2"]) == 2
    assert "--retry-failed runs again the failed users of an existing run" in capsys.readouterr().err


def test_xmx_auto_is_taken_on_the_command_line_as_in_the_config():
    args = run_production.parser().parse_args(["--full", "--shard", "0/4", "--xmx", "AUTO"])
    assert args.xmx == "auto"


def test_run_production_defaults_to_the_production_config():
    assert run_production.parser().parse_args(["--full", "--shard", "0/4"]).config == Path("config/proposal.yaml")


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_command_has_version_and_help_for_every_flag(name, capsys):
    parser = PARSERS[name]()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--version"])
    assert exit_info.value.code == 0
    assert "shardrun" in capsys.readouterr().out
    undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert undocumented == []
    assert "--version" in parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in (parser.formatter_class(name)._get_help_string(action)), action.option_strings


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardrun", "run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_a_missing_shard_is_refused_before_the_config_is_read(tmp_path):
    result = cli("--config", str(tmp_path / "no-such.yaml"), "--full")
    assert result.returncode == 2
    assert "--shard" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.jvm
def test_the_dry_run_refuses_jvm_flags_the_jvm_refuses_with_its_own_words(tmp_path):
    config = yaml.safe_load((REPO / "config" / "small.yaml").read_text())
    config["jvm"]["options"] = ["-XX:+NoSuchOptionOfShardrun"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("--config", str(path), "--full", "--shard", "0/4", "--dry-run")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "NoSuchOptionOfShardrun" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "analysis").exists()


@pytest.mark.jvm
def test_the_dry_run_with_xmx_auto_checks_the_resolved_flags():
    result = cli("--config", "config/small.yaml", "--full", "--shard", "0/4", "--dry-run", "--xmx", "auto")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jvm.xmx auto" in result.stdout and "java accepts the flags: -Xmx" in result.stdout
