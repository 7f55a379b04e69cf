"""What every command shares: logging set-up, error-to-exit mapping, and flag value types."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from shardrun.errors import EXIT_CRASH, ShardrunError
from shardrun.units import heap_bytes

log = logging.getLogger("shardrun")


def guarded(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    try:
        return main(args)
    except ShardrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:  # not swallowed: logged with its traceback, and a distinct exit code for the launcher
        log.exception("unexpected error; please report it with this traceback")
        return EXIT_CRASH


def heap_size(text: str) -> str:
    try:
        heap_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a JVM heap size such as 512m or 2g") from None
    return text


def thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads takes a positive number of threads, got {text!r}")
    return value


def pilot_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--pilot takes a positive number of users")
    return value


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
